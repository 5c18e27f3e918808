"""Resumable training of the conditional GAN (cGAN-KD section 5.2; CcGAN for regression).

``train_gan`` trains G and the projection D with the hinge loss (vicinal-weighted for regression),
optional DiffAugment and an EMA copy of G. All randomness after initialisation comes from one CPU
``torch.Generator`` whose state is checkpointed, so a resumed run ends bit-identical (on CPU) to an
uninterrupted one. Files in ``out_dir``: ``last.pt`` (every ``checkpoint_every`` steps; G, D, EMA G,
optimisers, RNG state, step), ``history.jsonl`` (losses every ``log_every`` steps), and at the end
``generator.pt`` (EMA G + architecture + ``seconds``, the training wall time summed over resumed
parts) and ``samples.png``. Images are de-normalised for the grid
with ``mean``/``std`` when given, else with the dataset's ``mean``/``std`` attributes
(:class:`xkd.data.tensors.TensorSplit` has them), else shown as they are.
"""

from __future__ import annotations

import copy
import json
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from xkd.gan.augment import diff_augment
from xkd.gan.config import GANConfig
from xkd.gan.grid import save_sample_grid
from xkd.gan.losses import hinge_d_loss, hinge_g_loss
from xkd.gan.networks import Discriminator, Generator
from xkd.gan.vicinal import kappa_from_gaps, rule_of_thumb_sigma, sample_vicinal_batch
from xkd.errors import UserError
from xkd.io import append_jsonl, read_jsonl, torch_load, torch_save, write_text


def load_images(ds: Dataset) -> tuple[torch.Tensor, torch.Tensor]:
    """All normalised images (N,C,H,W) and labels (N,) of a dataset of sample dicts."""
    if hasattr(ds, "images") and hasattr(ds, "normalise") and hasattr(ds, "labels"):
        return ds.normalise(ds.images), ds.labels.clone()
    xs, ys = [], []
    for batch in DataLoader(ds, batch_size=256, shuffle=False):
        xs.append(batch["image"].float())
        ys.append(batch["label"])
    return torch.cat(xs), torch.cat(ys)


def _mean_std(ds: Dataset, mean: Sequence[float] | None, std: Sequence[float] | None,
              c: int) -> tuple[list[float], list[float]]:
    if mean is None and hasattr(ds, "mean"):
        mean = torch.as_tensor(ds.mean).flatten().tolist()
    if std is None and hasattr(ds, "std"):
        std = torch.as_tensor(ds.std).flatten().tolist()
    return list(mean) if mean is not None else [0.0] * c, list(std) if std is not None else [1.0] * c


def _identity(cfg: GANConfig, task: str, num_classes: int, seed: int, x: torch.Tensor,
              y: torch.Tensor) -> dict[str, Any]:
    return {"config": cfg.model_dump(mode="json"), "task": task, "num_classes": int(num_classes),
            "seed": int(seed), "n_train": len(x), "image_shape": list(x.shape[1:]),
            "label_sum": float(y.double().sum())}


def _check_same(saved: dict[str, Any], now: dict[str, Any], path: Path) -> None:
    for key in now:
        if key == "config":
            diff = [k for k in now[key] if saved[key].get(k) != now[key][k]]
            if diff:
                k = diff[0]
                raise UserError(f"{path} was written with {k}={saved[key].get(k)!r}, not "
                                f"{now[key][k]!r}; use another folder or delete it")
        elif saved.get(key) != now[key]:
            raise UserError(f"{path} belongs to another GAN run ({key}: {saved.get(key)!r} vs "
                            f"{now[key]!r}); use another folder or delete it")


def load_generator(path: str | Path, device: torch.device | str = "cpu") -> Generator:
    """Rebuild the EMA generator saved as ``generator.pt`` (eval mode)."""
    return _generator_from(torch_load(path, map_location="cpu"), device)


def _generator_from(ckpt: dict[str, Any], device: torch.device | str) -> Generator:
    g = Generator(**ckpt["arch"])
    g.load_state_dict(ckpt["state"])
    return g.to(device).eval()


@torch.no_grad()
def generate(generator: nn.Module, labels: torch.Tensor, seed: int, batch_size: int = 256,
             device: torch.device | str = "cpu") -> torch.Tensor:
    """Images (N,C,H,W, normalised, on CPU) for ``labels`` (class ids or raw regression labels);
    the latents depend on ``seed`` only, not on ``batch_size``."""
    was_training = generator.training
    generator.eval().to(device)
    gen = torch.Generator().manual_seed(int(seed))
    z = torch.randn(len(labels), generator.z_dim, generator=gen)
    out = [generator(z[i:i + batch_size].to(device), labels[i:i + batch_size].to(device)).cpu()
           for i in range(0, len(labels), batch_size)]
    generator.train(was_training)
    return torch.cat(out) if out else torch.empty(0, generator.arch["channels"],
                                                  generator.image_size, generator.image_size)


@torch.no_grad()
def _ema_update(ema: nn.Module, g: nn.Module, decay: float) -> None:
    for pe, pg in zip(ema.parameters(), g.parameters()):
        pe.mul_(decay).add_(pg, alpha=1 - decay)
    for be, bg in zip(ema.buffers(), g.buffers()):
        be.copy_(bg)


class _Run:
    """Networks, optimisers and the data of one GAN run; ``step`` does one G update."""

    def __init__(self, cfg: GANConfig, task: str, num_classes: int, x: torch.Tensor,
                 y: torch.Tensor, device: torch.device, seed: int) -> None:
        self.cfg, self.task, self.device = cfg, task, device
        self.x = x.to(device)
        lo, hi = (0.0, 1.0) if task == "classification" else (float(y.min()), float(y.max()))
        torch.manual_seed(seed)
        c, s = x.shape[1], x.shape[-1]
        self.G = Generator(task, num_classes, s, c, cfg.z_dim, cfg.g_channels, cfg.embed_dim, lo, hi)
        self.D = Discriminator(task, num_classes, c, cfg.d_channels, lo, hi)
        self.G.to(device), self.D.to(device)
        self.G_ema = copy.deepcopy(self.G).eval()
        self.opt_g = torch.optim.Adam(self.G.parameters(), cfg.lr_g, betas=cfg.betas)
        self.opt_d = torch.optim.Adam(self.D.parameters(), cfg.lr_d, betas=cfg.betas)
        self.gen = torch.Generator().manual_seed(seed)
        self.step, self.seconds = 0, 0.0
        if task == "classification":
            self.y = y.long()
        else:
            self.y = self.G.embed.normalise(y.float())
            self.kappa = cfg.kappa if cfg.kappa is not None else kappa_from_gaps(self.y, cfg.kappa_gaps)
            self.sigma = cfg.sigma if cfg.sigma is not None else rule_of_thumb_sigma(self.y)

    def _aug(self, x: torch.Tensor) -> torch.Tensor:
        return diff_augment(x, self.gen) if self.cfg.diffaugment else x

    def _z(self, n: int) -> torch.Tensor:
        return torch.randn(n, self.cfg.z_dim, generator=self.gen).to(self.device)

    def _d_batch(self) -> tuple[torch.Tensor, ...]:
        """Real images, their D label, fake G labels, fake D labels, weights (normalised labels)."""
        b = self.cfg.batch_size
        if self.task == "classification":
            idx = torch.randint(len(self.x), (b,), generator=self.gen)
            yr = self.y[idx]
            return idx, yr, yr, yr, None, None
        vb = sample_vicinal_batch(self.y, b, self.cfg.vicinity, self.kappa, self.sigma, self.gen)
        return vb.real_index, vb.target, vb.fake_labels, vb.target, vb.w_real, vb.w_fake

    def train_step(self) -> dict[str, float]:
        """``d_steps`` D updates (hinge, vicinal weights for regression), one G update, the EMA;
        returns the last D step's losses and mean outputs and the G loss."""
        cfg, dev, norm = self.cfg, self.device, self.task != "classification"
        self.D.requires_grad_(True)
        for _ in range(cfg.d_steps):
            idx, y_real, y_gen, y_fake_d, w_r, w_f = (t.to(dev) if t is not None else None
                                                      for t in self._d_batch())
            with torch.no_grad():
                fake = self.G(self._z(len(idx)), y_gen, normalised=norm)
            d_real = self.D(self._aug(self.x[idx]), y_real, normalised=norm)
            d_fake = self.D(self._aug(fake), y_fake_d, normalised=norm)
            loss_r, loss_f = hinge_d_loss(d_real, d_fake, w_r, w_f)
            self.opt_d.zero_grad(set_to_none=True)
            (loss_r + loss_f).backward()
            self.opt_d.step()
        self.D.requires_grad_(False)
        _, _, y_gen, _, _, _ = self._d_batch()
        y_gen = y_gen.to(dev)
        loss_g = hinge_g_loss(self.D(self._aug(self.G(self._z(len(y_gen)), y_gen, normalised=norm)),
                                     y_gen, normalised=norm))
        self.opt_g.zero_grad(set_to_none=True)
        loss_g.backward()
        self.opt_g.step()
        self.step += 1
        _ema_update(self.G_ema, self.G, cfg.ema_decay if self.step > cfg.ema_start else 0.0)
        return {"loss_d_real": loss_r.item(), "loss_d_fake": loss_f.item(), "loss_g": loss_g.item(),
                "d_real": d_real.mean().item(), "d_fake": d_fake.mean().item()}

    def state(self, ident: dict[str, Any]) -> dict[str, Any]:
        """Everything ``last.pt`` needs to resume bit-identically (networks, optimisers, RNG)."""
        return {"step": self.step, "G": self.G.state_dict(), "D": self.D.state_dict(),
                "G_ema": self.G_ema.state_dict(), "opt_g": self.opt_g.state_dict(),
                "opt_d": self.opt_d.state_dict(), "rng": self.gen.get_state(), "identity": ident,
                "seconds": self.seconds}

    def load(self, ckpt: dict[str, Any]) -> None:
        """Restore a ``state`` dict (the inverse of :meth:`state`)."""
        self.G.load_state_dict(ckpt["G"])
        self.D.load_state_dict(ckpt["D"])
        self.G_ema.load_state_dict(ckpt["G_ema"])
        self.opt_g.load_state_dict(ckpt["opt_g"])
        self.opt_d.load_state_dict(ckpt["opt_d"])
        self.gen.set_state(ckpt["rng"])
        self.step, self.seconds = int(ckpt["step"]), float(ckpt.get("seconds", 0.0))


def train_gan(cfg: GANConfig, train_set: Dataset, task: str, num_classes: int, out_dir: Path,
              device: torch.device, seed: int, resume: bool = False,
              log: Callable[[str], Any] = print, mean: Sequence[float] | None = None,
              std: Sequence[float] | None = None, stop_after: int | None = None) -> nn.Module:
    """Train (or load, if ``out_dir/generator.pt`` exists) the conditional GAN; return the EMA G.

    ``resume`` continues from ``out_dir/last.pt``. ``stop_after`` stops after that many steps
    (writing last.pt, no generator.pt) and returns the current EMA G: for tests and time slices.
    """
    out_dir, device = Path(out_dir), torch.device(device)
    if task not in ("classification", "regression"):
        raise UserError(f"task must be 'classification' or 'regression'; got {task!r}")
    x, y = load_images(train_set)
    ident = _identity(cfg, task, num_classes, seed, x, y)
    final = out_dir / "generator.pt"
    if final.is_file():
        saved = torch_load(final)
        _check_same(saved["identity"], ident, final)
        log(f"GAN: loading the finished generator {final}")
        return _generator_from(saved, device)
    run = _Run(cfg, task, num_classes, x, y, device, seed)
    last, hist = out_dir / "last.pt", out_dir / "history.jsonl"
    if resume and last.is_file():
        ckpt = torch_load(last)
        _check_same(ckpt["identity"], ident, last)
        run.load(ckpt)
        rows = [r for r in read_jsonl(hist) if r.get("step", 0) <= run.step]
        write_text(hist, "".join(json.dumps(r) + "\n" for r in rows))
        log(f"GAN: resuming from step {run.step}")
    elif hist.exists():
        hist.unlink()
    end = cfg.steps if stop_after is None else min(cfg.steps, stop_after)
    t0, start = time.perf_counter(), run.seconds
    while run.step < end:
        losses = run.train_step()
        run.seconds = start + time.perf_counter() - t0
        if run.step % cfg.log_every == 0 or run.step == cfg.steps:
            append_jsonl(hist, {"step": run.step, **losses, "seconds": round(run.seconds, 3)})
            log(f"GAN step {run.step}/{cfg.steps}: " +
                ", ".join(f"{k} {v:.3f}" for k, v in losses.items()))
        if run.step % cfg.checkpoint_every == 0 or run.step == end:
            torch_save(last, run.state(ident))
    if run.step < cfg.steps:
        return run.G_ema.eval()
    torch_save(final, {"arch": run.G_ema.arch, "state": run.G_ema.state_dict(), "identity": ident,
                       "seconds": run.seconds})
    m, s = _mean_std(train_set, mean, std, x.shape[1])
    save_sample_grid(run.G_ema, out_dir / "samples.png", m, s, seed=seed, device=device)
    return run.G_ema.eval()
