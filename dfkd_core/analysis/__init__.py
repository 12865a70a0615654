"""Why distillation worked: representations (CKA, methods.md#cka), attention (Grad-CAM, methods.md#grad-cam), decision
boundaries (MagSim/AngSim, methods.md#bss), active neurons (methods.md#ie-kd).

captum is imported only when a Grad-CAM is computed, so importing this package stays cheap.
"""
from dfkd_core.analysis.boundary import compare_students, decision_boundary_similarity
from dfkd_core.analysis.cka import (CKA_METHODS, KERNELS, RBF_BANDWIDTHS, cka, debiased_linear_cka,
                                    debiased_rbf_cka, describe_kernel, gram_cka, gram_linear, gram_rbf, hsic,
                                    linear_cka, rbf_cka, unbiased_hsic)
from dfkd_core.analysis.cka_accumulators import LinearCKAAccumulator, MinibatchCKA
from dfkd_core.analysis.cka_matrix import ESTIMATORS, CKAMatrix, CKAResult, cka_matrix
from dfkd_core.analysis.features import (FeatureCapture, activation_density, active_neuron_fraction,
                                         capture_features, default_attention_layer, iter_features, layer_names,
                                         neuron_firing_rates, resolve_layers, trace_layers)
from dfkd_core.analysis.gradcam import (TARGETS, AttentionComparator, AttentionComparison, attention_correlation,
                                        compare_attention, grad_cam, top_region_iou)

__all__ = ["CKA_METHODS", "CKAMatrix", "CKAResult", "ESTIMATORS", "KERNELS", "RBF_BANDWIDTHS", "TARGETS",
           "AttentionComparator", "AttentionComparison", "FeatureCapture", "LinearCKAAccumulator", "MinibatchCKA",
           "activation_density", "active_neuron_fraction", "attention_correlation", "capture_features", "cka",
           "cka_matrix", "compare_attention", "compare_students", "decision_boundary_similarity", "debiased_linear_cka",
           "debiased_rbf_cka", "default_attention_layer", "describe_kernel", "gram_cka", "gram_linear", "gram_rbf",
           "grad_cam", "hsic", "iter_features", "layer_names", "linear_cka", "neuron_firing_rates", "rbf_cka",
           "resolve_layers", "top_region_iou", "trace_layers", "unbiased_hsic"]
