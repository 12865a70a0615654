"""IE-KD and IE-DML (methods.md#ie-kd, Huang et al. CVPR 2021): inheritance and exploration.

    iekd    offline: a teacher autoencoder (E, D) is trained on the teacher's split-layer map (phase
            "autoencoder", L_rec logged), then the student learns with
            L = L_goal + λ_inh · d(t, ŝ_inh) − λ_exp · d(t, ŝ_exp),  t = E(f_T)
            where ŝ_inh, ŝ_exp encode the two channel halves of the student's split-layer map.
    iedml   online: two students learn together; each one's autoencoder learns its own map (L_rec), and each
            student inherits from / explores away from the *other* student's factor, plus deep mutual learning's
            KL(p_peer ‖ p_self). The job's student is saved as model.pt, its peer as model_b.pt.

Inputs: the real training split (labels = the real labels), or a synthesized pool (`--pool`: data-free IE-KD).
On a pool, L_goal's target is the teacher's argmax on the (augmented) image by default (`pool_labels=teacher`):
every pool image gets a label, and the label describes the image the student actually sees; `pool_labels=
synthesized` uses the class each image was synthesized for instead.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from functools import partial
from typing import Iterator

import torch
import torch.nn as nn

from dfkd_core.analysis.features import default_attention_layer, resolve_layers, trace_layers
from dfkd_core.config import Config
from dfkd_core.device import prepare_input, prepare_model
from dfkd_core.distill.iekd_modules import (FACTOR_NORMS, FactorAutoencoder, InheritanceExploration, LayerTap,
                                            as_map, exploration_distance, ie_term_weights, inheritance_distance,
                                            reconstruction_loss)
from dfkd_core.distill.methods import RealOrPoolMethod, register_method
from dfkd_core.distill.resume import Progress, clone_state
from dfkd_core.jobs import check_finite
from dfkd_core.losses import cross_entropy_loss, kd_loss
from dfkd_core.models import save_checkpoint
from dfkd_core.runs import atomic_torch_save
from dfkd_core.training import evaluate

POOL_LABELS = ("teacher", "synthesized")


@dataclass
class IEOptions(Config):
    """Settings shared by IE-KD and IE-DML (`--option key=value`)."""

    layer_student: str = ""           # split layer; empty: the last block with a spatial map (the Grad-CAM layer)
    lambda_inh: float = 1.0           # weight of the inheritance distance (pulled toward the factor)
    lambda_exp: float = 1.0           # weight of the exploration distance (pushed away from the factor)
    inheritance_share: float = 0.5    # share of the split layer's channels inheriting; 1: Factor Transfer (no exp)
    factor_channels: int = 0          # channels of the factor t; 0: half of the factor source's channels
    distance_norm: int = 2            # p of ‖t̂ − ŝ‖_p: 2 (bounded by 2 on any layer) or 1 (Factor Transfer's)
    alpha_kd: float = 0.0             # optional logit KD from the teacher on top (0: the paper's L_goal only)
    pool_labels: str = "teacher"      # L_goal target on a pool: the teacher's argmax | the synthesized class

    def validate(self) -> None:
        self.require_finite()
        if not 0 < self.inheritance_share <= 1:
            raise ValueError(f"inheritance_share must be in (0, 1], got {self.inheritance_share}")
        if self.inheritance_share == 1 and self.lambda_exp > 0:
            raise ValueError("inheritance_share=1 leaves no channels to explore (Factor Transfer); set lambda_exp=0")
        if self.lambda_inh < 0 or self.lambda_exp < 0 or self.alpha_kd < 0 or self.factor_channels < 0:
            raise ValueError("lambda_inh, lambda_exp, alpha_kd and factor_channels must be >= 0")
        if self.distance_norm not in FACTOR_NORMS:
            raise ValueError(f"distance_norm must be one of {FACTOR_NORMS}, got {self.distance_norm}")
        if self.pool_labels not in POOL_LABELS:
            raise ValueError(f"pool_labels must be one of {POOL_LABELS}, got '{self.pool_labels}'")


@dataclass
class IEKDOptions(IEOptions):
    layer_teacher: str = ""           # empty: the teacher's last block with a spatial map
    autoencoder_steps: int = 300      # teacher autoencoder training before the student starts
    autoencoder_lr: float = 1e-3

    def validate(self) -> None:
        super().validate()
        if self.autoencoder_steps < 1 or self.autoencoder_lr <= 0:
            raise ValueError("the teacher autoencoder needs autoencoder_steps >= 1 and autoencoder_lr > 0")


@dataclass
class IEDMLOptions(IEOptions):
    alpha_dml: float = 1.0            # weight of deep mutual learning's KL(p_peer ‖ p_self), T = 1
    lambda_rec: float = 1.0           # weight of each student's online autoencoder loss (trains the AEs only)

    def validate(self) -> None:
        super().validate()
        if self.alpha_dml < 0 or self.lambda_rec <= 0:
            raise ValueError("alpha_dml must be >= 0 and lambda_rec > 0")


@dataclass
class SplitLayer:
    """One model's split layer: where its map is read (a tap) and the map's shape (without the batch)."""

    tap: LayerTap
    shape: tuple[int, ...]

    @property
    def channels(self) -> int:
        return self.shape[0]

    @property
    def size(self) -> tuple[int, int]:
        return tuple(self.shape[1:3]) if len(self.shape) == 3 else (1, 1)


def split_layer(model: nn.Module, name: str, example: torch.Tensor) -> SplitLayer:
    """Resolve `name` (empty: the last block with a spatial map) and measure its output on `example`."""
    name = name or default_attention_layer(model, example)
    (name, module), = resolve_layers(model, [name])   # an unknown name raises, listing the model's layers
    shape = next(i.output_shape for i in trace_layers(model, example) if i.name == name)
    if len(shape) not in (1, 3) or shape[0] < 2:
        raise ValueError(f"layer '{name}' gives outputs of shape {shape}; IE-KD splits the channels of a feature "
                         "map (C, H, W) or vector (C,) with at least 2 channels")
    return SplitLayer(LayerTap(module, name), shape)


def inheritance_channels(channels: int, share: float) -> int:
    """Channels of the inheritance part: all of them for share 1 (Factor Transfer), else at least one each."""
    return channels if share == 1 else min(channels - 1, max(1, round(channels * share)))


@register_method
class InheritanceExplorationKD(RealOrPoolMethod):
    """IE-KD (methods.md#ie-kd–5.3): autoencoder phase, then student steps with the IE loss."""

    name, data_free = "iekd", False
    description = ("IE-KD: CE, plus one half of the student's split layer inherits the teacher autoencoder's "
                   "factor and the other half explores away from it (real data; --pool: data-free)")
    Options = IEKDOptions
    other_steps_name = "autoencoder steps"

    def __init__(self, job):
        super().__init__(job)
        if self.options.layer_student:   # fail before any run starts: the student is built only in setup
            resolve_layers(self.build_student(), [self.options.layer_student])
        self._check_teacher_layer()

    def _check_teacher_layer(self) -> None:
        if self.options.layer_teacher:
            resolve_layers(self.job.teacher, [self.options.layer_teacher])

    def _example(self) -> torch.Tensor:
        d = self.job.dataset
        return torch.zeros(2, d.in_channels, d.image_size, d.image_size, device=self.job.device)

    def total_steps(self) -> int:
        return self.options.autoencoder_steps + self.config.steps

    # ------------------------------------------------------------------ modules
    def student_parameters(self):
        """Called once the student exists: build the factor networks, which the student's optimizer also trains."""
        j, o = self.job, self.options
        example = self._example()
        self.teacher_layer = split_layer(j.teacher, o.layer_teacher, example)
        self.student_layer = split_layer(j.student, o.layer_student, example)
        factors = o.factor_channels or max(1, self.teacher_layer.channels // 2)
        self.autoencoder = FactorAutoencoder(self.teacher_layer.channels, factors).to(j.device)
        self.student_factors = InheritanceExploration(
            self.student_layer.channels, inheritance_channels(self.student_layer.channels, o.inheritance_share),
            factors, self.teacher_layer.size).to(j.device)
        return [*j.student.parameters(), *self.student_factors.parameters()]

    def setup(self) -> None:
        self.weights = {"kd": self.options.alpha_kd, **ie_term_weights(self.options.lambda_inh,
                                                                        self.options.lambda_exp)}
        self.autoencoder_optimizer = torch.optim.Adam(self.autoencoder.parameters(), lr=self.options.autoencoder_lr)
        if not self.data_free:
            self.train_split = self.job.real_split("train")

    # ------------------------------------------------------------------ inputs
    def sample(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """A batch of normalized images and L_goal's labels (None: the teacher's argmax, see the module doc)."""
        j, n = self.job, self.config.batch_size
        if self.data_free:
            x, targets = j.pool.sample(n, j.rng)
            self.latest = (x, targets)
            return x, targets if self.options.pool_labels == "synthesized" else None
        idx = torch.randint(0, len(self.train_split), (n,), generator=j.rng)
        x, labels = self.train_split.normalized(idx), self.train_split.labels[idx]
        self.latest = (x, labels)
        return x, labels

    def goal(self, student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor | None
             ) -> torch.Tensor:
        """L_goal: CE on the labels (or the teacher's argmax on a pool, see the module doc)."""
        target = labels.to(student_logits.device) if labels is not None else teacher_logits.argmax(1)
        return cross_entropy_loss(student_logits, target)

    # ------------------------------------------------------------------ the plan
    def train_autoencoder(self, start: Progress) -> Iterator[dict]:
        """methods.md#ie-kd: (E, D) learns the teacher's split-layer map by reconstruction; frozen afterwards."""
        j, o, ae, optimizer = self.job, self.options, self.autoencoder, self.autoencoder_optimizer
        tap = self.teacher_layer.tap
        ae.train()
        for _ in range(o.autoencoder_steps - start.autoencoder_steps):
            x, _ = self.sample()
            with torch.no_grad(), tap.attached():
                j.teacher(prepare_input(x, j.device))
                features = as_map(tap.take().float())
            loss = ae.loss(features)
            check_finite({"ae_loss_rec": loss}, j.step_index)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            energy = features.flatten(1).pow(2).sum(1).mean()
            self.rec_loss_end = float(loss.detach())
            self.done.autoencoder_steps += 1
            yield {"phase": "autoencoder", "ae_loss_rec": self.rec_loss_end,
                   "ae_relative_error": self.rec_loss_end / max(float(energy), 1e-12)}
        ae.eval()
        for p in ae.parameters():
            p.requires_grad_(False)

    def ie_terms(self, x: torch.Tensor, student_logits: torch.Tensor, teacher_logits: torch.Tensor,
                 labels: torch.Tensor | None) -> dict[str, torch.Tensor]:
        """L_goal and the two distances; the KD loop weighs them with `ie_term_weights` (methods.md#ie-kd)."""
        p = self.options.distance_norm
        with torch.no_grad():
            teacher_factor = self.autoencoder.encoder(self.teacher_layer.tap.take().float())
        inh, exp = self.student_factors(self.student_layer.tap.take().float())
        terms = {"goal": self.goal(student_logits, teacher_logits, labels),
                 "inh": inheritance_distance(teacher_factor, inh, p)}
        if exp is not None:
            terms["exp"] = exploration_distance(teacher_factor, exp, p)
        return terms

    def ie_step(self, x: torch.Tensor, labels: torch.Tensor | None) -> dict:
        self.student_factors.train()
        with self.teacher_layer.tap.attached(), self.student_layer.tap.attached():
            return self.kd_step(x, extra_terms=partial(self.ie_terms, labels=labels), weights=self.weights)

    def plan(self, start: Progress) -> Iterator[dict]:
        yield from self.train_autoencoder(start)
        for _ in range(self.config.steps - self.job.trainer.steps_done):
            yield self.ie_step(*self.sample())

    def state_dict(self) -> dict:
        return clone_state({"autoencoder": self.autoencoder.state_dict(),
                            "autoencoder_optimizer": self.autoencoder_optimizer.state_dict(),
                            "student_factors": self.student_factors.state_dict(),
                            "rec_loss_end": getattr(self, "rec_loss_end", math.nan)})

    def load_state_dict(self, state: dict) -> None:
        self.autoencoder.load_state_dict(state["autoencoder"])
        self.autoencoder_optimizer.load_state_dict(state["autoencoder_optimizer"])
        self.student_factors.load_state_dict(state["student_factors"])
        self.rec_loss_end = state["rec_loss_end"]

    def describe_progress(self, progress: Progress) -> str:
        return (f"autoencoder step {progress.autoencoder_steps:,} of {self.options.autoencoder_steps:,}, "
                + super().describe_progress(progress))

    # ------------------------------------------------------------------ results
    def describe(self) -> dict:
        return {"layer_teacher": self.teacher_layer.tap.name, "layer_student": self.student_layer.tap.name,
                "inheritance_channels": self.student_factors.inheritance_channels,
                "exploration_channels": self.student_layer.channels - self.student_factors.inheritance_channels,
                "factor_channels": self.autoencoder.encoder.net[-1].out_channels,
                "ae_loss_rec_end": getattr(self, "rec_loss_end", math.nan)}

    def artifacts(self, directory) -> dict:
        if not hasattr(self, "student_factors"):
            return {}
        info = self.describe()
        atomic_torch_save({**info, "autoencoder": _cpu_state(self.autoencoder),
                           "student_factors": _cpu_state(self.student_factors)}, directory / "iekd.pt")
        return info


def _cpu_state(module: nn.Module) -> dict:
    return {k: v.detach().cpu() for k, v in module.state_dict().items()}


class Peer:
    """One IE-DML student with its own online autoencoder and its inheritance/exploration encoders."""

    def __init__(self, model: nn.Module, layer: SplitLayer, options: IEDMLOptions, device: torch.device):
        factors = options.factor_channels or max(1, layer.channels // 2)
        self.model, self.layer = model, layer
        self.autoencoder = FactorAutoencoder(layer.channels, factors).to(device)
        self.factors = InheritanceExploration(layer.channels, inheritance_channels(layer.channels,
                                                                                   options.inheritance_share),
                                              factors, layer.size).to(device)

    def parameters(self) -> list[nn.Parameter]:
        return [*self.model.parameters(), *self.autoencoder.parameters(), *self.factors.parameters()]

    def train(self) -> None:
        for m in (self.model, self.autoencoder, self.factors):
            m.train()


@register_method
class InheritanceExplorationDML(InheritanceExplorationKD):
    """IE-DML (methods.md#ie-kd): two students, each the other's 'teacher' for both IE terms, plus DML's KL."""

    name, data_free = "iedml", False
    description = ("IE-DML: two students learn online, each inheriting from / exploring away from the other's "
                   "factor, plus mutual KL (saves model.pt and model_b.pt)")
    Options = IEDMLOptions

    def _check_teacher_layer(self) -> None:
        """No teacher layer: the peers read each other."""

    def total_steps(self) -> int:
        return self.config.steps

    def student_parameters(self):
        j, o = self.job, self.options
        example = self._example()
        self.student_b = prepare_model(self.build_student(), j.device)   # a different initialization
        self.peers = [Peer(model, split_layer(model, o.layer_student, example), o, j.device)
                      for model in (j.student, self.student_b)]
        return [p for peer in self.peers for p in peer.parameters()]

    def setup(self) -> None:
        o = self.options
        ie = ie_term_weights(o.lambda_inh, o.lambda_exp)
        per_student = {**ie, "dml": o.alpha_dml, "rec": o.lambda_rec, "kd": o.alpha_kd}
        # Keys without suffix belong to the job's student (the KD loop computes its "kd" itself), "_b" to its peer.
        self.weights = {**per_student, **{f"{k}_b": v for k, v in per_student.items()}}
        if not self.data_free:
            self.train_split = self.job.real_split("train")

    def ie_terms(self, x: torch.Tensor, student_logits: torch.Tensor, teacher_logits: torch.Tensor,
                 labels: torch.Tensor | None) -> dict[str, torch.Tensor]:
        a, b = self.peers
        c, p = self.config, self.options.distance_norm
        with b.layer.tap.attached():
            logits = {"": student_logits, "_b": b.model(x).float()}
            features = {"": a.layer.tap.take().float(), "_b": b.layer.tap.take().float()}
        terms: dict[str, torch.Tensor] = {}
        factors = {}
        for key, peer in zip(("", "_b"), self.peers):
            # Each autoencoder learns its own student's map (detached: L_rec shapes the autoencoder only).
            factors[key], reconstruction = peer.autoencoder(features[key].detach())
            terms[f"rec{key}"] = reconstruction_loss(as_map(features[key].detach()), reconstruction)
        for key, other, peer in (("", "_b", a), ("_b", "", b)):
            inh, exp = peer.factors(features[key])
            terms[f"goal{key}"] = self.goal(logits[key], teacher_logits, labels)
            terms[f"inh{key}"] = inheritance_distance(factors[other], inh, p)    # the peer's factor, detached
            if exp is not None:
                terms[f"exp{key}"] = exploration_distance(factors[other], exp, p)
            terms[f"dml{key}"] = kd_loss(logits[key], logits[other].detach(), 1.0)
        if self.options.alpha_kd > 0:
            terms["kd_b"] = kd_loss(logits["_b"], teacher_logits, c.temperature)
        return terms

    def ie_step(self, x: torch.Tensor, labels: torch.Tensor | None) -> dict:
        for peer in self.peers:
            peer.train()
        with self.peers[0].layer.tap.attached():
            metrics = self.kd_step(x, extra_terms=partial(self.ie_terms, labels=labels), weights=self.weights)
        done = self.job.trainer.steps_done
        if done % self.config.eval_every == 0 or done == self.config.steps:
            metrics["student_b_accuracy"] = evaluate(self.student_b, self.job.heldout, self.job.device)["accuracy"]
        return metrics

    def plan(self, start: Progress) -> Iterator[dict]:
        for _ in range(self.config.steps - self.job.trainer.steps_done):
            yield self.ie_step(*self.sample())

    def state_dict(self) -> dict:
        return clone_state({"student_b": self.student_b.state_dict(),
                            "peers": [{"autoencoder": p.autoencoder.state_dict(), "factors": p.factors.state_dict()}
                                      for p in self.peers]})

    def load_state_dict(self, state: dict) -> None:
        self.student_b.load_state_dict(state["student_b"])
        for peer, saved in zip(self.peers, state["peers"]):
            peer.autoencoder.load_state_dict(saved["autoencoder"])
            peer.factors.load_state_dict(saved["factors"])

    def describe_progress(self, progress: Progress) -> str:
        return RealOrPoolMethod.describe_progress(self, progress)   # no autoencoder phase: the peers' learn online

    def test_hits(self) -> dict[str, torch.Tensor]:
        if not hasattr(self, "peers"):
            return {}
        self.student_b_hits = evaluate(self.student_b, self.job.real_split("test"), self.job.device)["correct"]
        return {"student_b": self.student_b_hits}

    def describe(self) -> dict:
        a = self.peers[0]
        return {"layer_student": a.layer.tap.name, "inheritance_channels": a.factors.inheritance_channels,
                "exploration_channels": a.layer.channels - a.factors.inheritance_channels,
                "factor_channels": a.autoencoder.encoder.net[-1].out_channels}

    def artifacts(self, directory) -> dict:
        if not hasattr(self, "peers"):
            return {}
        j = self.job
        accuracy = int(self.student_b_hits.sum()) / max(len(self.student_b_hits), 1)
        path = save_checkpoint(directory / "model_b.pt", self.student_b, j.dataset,
                               {"test_accuracy": accuracy, "teacher_accuracy": j.teacher_accuracy,
                                "peer_of": str(directory / "model.pt")})
        atomic_torch_save({**self.describe(), **{f"peer_{i}": {"autoencoder": _cpu_state(p.autoencoder),
                                                               "factors": _cpu_state(p.factors)}
                                                 for i, p in enumerate(self.peers)}}, directory / "iekd.pt")
        return {**self.describe(), "student_b_checkpoint": str(path)}


__all__ = ["IEDMLOptions", "IEKDOptions", "IEOptions", "InheritanceExplorationDML", "InheritanceExplorationKD",
           "POOL_LABELS", "inheritance_channels", "split_layer"]
