"""One training loop for every long command (`train`, `fit-prior`, `fit-ebm`), after pythae's BaseTrainer:
the loop owns the position, the epoch statistics and the run's lifecycle (run.Run: checkpoints, the
stop on a signal, the epoch logs); a subclass says what one step does.

    class MyLoop(Loop):                                 # the hooks
        def order(self, epoch): ...                     # the epoch's permutation of range(n)
        def forward(self, epoch, step, idx): ...        # (loss, stats, weight) of the batch idx; None: no step
        def backward(self, loss, epoch, step): ...      # the optimizer's step
        def save(self, epoch, step, sums, seen): ...    # a checkpoint at that position
        def restore(self): ...                          # (epoch, step, sums, seen) of the last checkpoint
    loop = MyLoop(run, n=N, batch_size=B, epochs=E)     # run None: no checkpoint, log or signal
    if resume:
        loop.resume()
    finished = loop.fit()                               # False when --max-steps stopped it

Positions: step s of epoch e trains on order(e)[s B : (s + 1) B] for s < S = ceil(n / B); the
global step is e S + s. Statistics: sums[k] = sum over the epoch's steps of stats[k] * weight and
seen = the sum of the weights, so the epoch's row holds sums[k] / seen (weight = the batch's size: a
mean over samples; weight 1: the mean of the batch means), summed over ranks when distributed.

Every step: `forward`; a non-finite loss raises NumericalError (exit 3) before the optimizer changes
anything, and the stop flag (SIGTERM/SIGUSR1) is read, both in one collective when distributed so
every rank agrees; `backward`; `step_delay` seconds of sleep (tests); then, when a stop was asked
for or `max_steps` steps were taken in this call, a checkpoint at the next position (and exit 75 for
a signal). After each epoch: its `row` (and "seconds") logged by Run.end_epoch, then `on_epoch_end`
(may raise NumericalError for a diverging run: the epoch is logged, never saved), then a checkpoint
at (e + 1, 0). A resumed loop starts at its checkpoint's position with the partial sums, so its
numbers are those of an uninterrupted one: the hooks must draw no random numbers outside the steps.
"""

from __future__ import annotations

import time
from contextlib import nullcontext

import torch

from .console import progress
from .errors import NumericalError
from .runtime import Dist


class Loop:
    """The epoch/step loop; subclasses implement the hooks (see the module's docstring)."""

    resume_hint = "continue with --resume"  # the last line of a run stopped by a signal

    def __init__(
        self,
        run,
        *,
        n: int,
        batch_size: int,
        epochs: int,
        what: str = "epoch",
        step_delay: float = 0.0,
        max_steps: int | None = None,
    ):
        self.run = run
        self.dist = run.dist if run is not None else Dist()
        self.n, self.batch_size, self.epochs = int(n), int(batch_size), int(epochs)
        self.steps_per_epoch = (self.n + self.batch_size - 1) // self.batch_size
        self.what = what  # the epoch lines' and progress bar's prefix: "WHAT 3/10 ..."
        self.step_delay, self.max_steps = step_delay, max_steps
        self.start = (0, 0)  # (epoch, step) where fit begins
        self.sums: dict[str, float] = {}
        self.seen = 0
        self.perm: torch.Tensor | None = None  # the current epoch's order (a resumed one's, when saved)
        self.done = 0  # steps taken in this call

    # --- hooks -------------------------------------------------------------------------------------
    def order(self, epoch: int) -> torch.Tensor:
        """The permutation of range(n) that epoch `epoch` visits."""
        raise NotImplementedError

    def forward(self, epoch: int, step: int, idx: torch.Tensor):
        """(loss, stats, weight) of the batch `idx` (stats: floats), or None to take no step on it."""
        raise NotImplementedError

    def backward(self, loss: torch.Tensor, epoch: int, step: int) -> None:
        """The optimizer's step on `loss`."""
        raise NotImplementedError

    def diverged(self, loss: torch.Tensor | None, epoch: int, step: int) -> str:
        """The one-line error for a non-finite loss."""
        return f"the loss became non-finite at epoch {epoch + 1}, step {step + 1}; try a lower --lr"

    def row(self, epoch: int, means: dict[str, float]) -> dict:
        """The epoch's summary (the loop adds "seconds")."""
        return {"epoch": epoch + 1, **means}

    def on_epoch_end(self, epoch: int, row: dict) -> None:
        """After the epoch's row is logged and before it is saved; raising here keeps the last checkpoint."""

    def save(self, epoch: int, step: int, sums: dict[str, float], seen: float) -> None:
        """Write a checkpoint at position (epoch, step) with the epoch's partial sums so far."""
        raise NotImplementedError

    def restore(self) -> tuple[int, int, dict[str, float], float]:
        """Restore the last checkpoint's state in place; its (epoch, step, sums, seen)."""
        raise NotImplementedError

    # --- the loop ----------------------------------------------------------------------------------
    def resume(self) -> None:
        """Continue from the run's checkpoint (`restore`)."""
        epoch, step, self.sums, self.seen = self.restore()
        self.start = (epoch, step)

    def _reduce(self) -> tuple[dict[str, float], float]:
        """The epoch's sums and weight so far, over all ranks."""
        if not self.dist.enabled:
            return dict(self.sums), self.seen
        keys = sorted(self.sums)
        total = self.dist.sum(torch.tensor([float(self.seen)] + [self.sums[k] for k in keys], dtype=torch.float64))
        return {k: float(v) for k, v in zip(keys, total[1:].tolist())}, int(total[0].item())

    def _checkpoint(self, epoch: int, step: int, sums: dict[str, float], seen: float) -> None:
        if self.run is not None:
            self.save(epoch, step, sums, seen)

    def fit(self) -> bool:
        """Run the epochs from `start`; True when the last one is done, False when `max_steps` stopped it."""
        run, dist, S, B = self.run, self.dist, self.steps_per_epoch, self.batch_size
        first_epoch, first_step = self.start
        with run.session() if run is not None else nullcontext():
            for epoch in range(first_epoch, self.epochs):
                first = first_step if epoch == first_epoch else 0
                if not first or self.perm is None:
                    self.perm = self.order(epoch)
                if not (first and dist.is_main):  # a resumed epoch's (global) sums live on rank 0
                    self.sums, self.seen = {}, 0
                t0 = time.time()
                bar = progress(
                    range(first, S),
                    desc=f"{self.what} {epoch + 1}/{self.epochs}",
                    total=S,
                    initial=first,
                    disable=not dist.is_main,
                )
                for step in bar:
                    out = self.forward(epoch, step, self.perm[step * B : (step + 1) * B])
                    bad = out is not None and not bool(torch.isfinite(out[0]))
                    stopping = run is not None and bool(run.stop)
                    if dist.enabled:  # one collective per step: every rank raises or stops together
                        flags = dist.sum(torch.tensor([float(bad), float(stopping)]))
                        bad, stopping = bool(flags[0] > 0), bool(flags[1] > 0)
                    if bad:
                        raise NumericalError(self.diverged(None if out is None else out[0], epoch, step))
                    if out is not None:
                        loss, stats, weight = out
                        self.backward(loss, epoch, step)
                        for k, v in stats.items():
                            self.sums[k] = self.sums.get(k, 0.0) + v * weight
                        self.seen += weight
                        if stats:
                            k = next(iter(stats))
                            bar.set_postfix({k: f"{stats[k]:.4g}"})
                    self.done += 1
                    if self.step_delay:
                        time.sleep(self.step_delay)
                    if stopping or (self.max_steps is not None and self.done >= self.max_steps and step + 1 < S):
                        self._checkpoint(epoch, step + 1, *self._reduce())
                        if stopping:
                            run.interrupted(self.resume_hint)
                        return False
                sums, seen = self._reduce()
                row = self.row(epoch, {k: v / max(seen, 1) for k, v in sums.items()})
                row["seconds"] = round(time.time() - t0, 2)
                if run is not None:
                    run.end_epoch(row, self.epochs, prefix=self.what)
                self.on_epoch_end(epoch, row)
                self._checkpoint(epoch + 1, 0, {}, 0)
                if self.max_steps is not None and self.done >= self.max_steps:
                    return False
        return True


class FitLoop(Loop):
    """A post-hoc fit of `module` by Adam (`opt`) to a frozen VAE's aggregate posterior (fit-prior,
    fit-ebm): each epoch's permutation is drawn from its own generator seeded with `seed`, each batch
    weighs 1 (rows are means of batch means), the rows are kept in `history`. Its checkpoint
    (Run.checkpoint_fit): the module's weights under `key.`, Adam, the RNG streams, the generator, the
    mid-epoch permutation, `extra_tensors()`; state {epoch, start (the position in samples), sums,
    batches, history}. Subclasses implement `forward` (and `diverged`)."""

    resume_hint = "continue with the same command and --resume"

    def __init__(
        self,
        run,
        module: torch.nn.Module,
        opt: torch.optim.Optimizer,
        bank,
        settings,
        *,
        seed: int,
        key: str = "prior",
        **kw,
    ):
        """`bank`: the aggregate posterior (bank.n samples); `settings`: the fit's (epochs, batch_size)."""
        super().__init__(run, n=bank.n, batch_size=settings.batch_size, epochs=settings.epochs, **kw)
        self.module, self.opt, self.key, self.seed = module, opt, key, int(seed)
        self.bank, self.settings = bank, settings
        self.generator = torch.Generator().manual_seed(self.seed)
        self.history: list[dict] = []

    def extra_tensors(self) -> dict[str, torch.Tensor]:
        """More tensors for the checkpoint (e.g. persistent chains)."""
        return {}

    def restore_extra(self, tensors: dict[str, torch.Tensor]) -> None:
        """Take back what `extra_tensors` saved."""

    def order(self, epoch: int) -> torch.Tensor:
        return torch.randperm(self.n, generator=self.generator)

    def backward(self, loss: torch.Tensor, epoch: int, step: int) -> None:
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()

    def on_epoch_end(self, epoch: int, row: dict) -> None:
        self.history.append(row)

    def save(self, epoch: int, step: int, sums: dict[str, float], seen: float) -> None:
        state = {
            "epoch": epoch,
            "start": step * self.batch_size,
            "sums": sums,
            "batches": seen,
            "history": self.history,
        }
        perm = self.perm if step else None
        self.run.checkpoint_fit(self.key, self.module, self.opt, self.generator, state, perm, self.extra_tensors())

    def restore(self) -> tuple[int, int, dict[str, float], float]:
        tensors, state = self.run.restore_fit(self.key, self.module, self.opt, self.generator, self.seed)
        start = int(state["start"])
        self.history = list(state["history"])
        self.perm = tensors.get("fit.perm") if start else None
        self.restore_extra(tensors)
        return int(state["epoch"]), -(-start // self.batch_size), dict(state.get("sums", {})), int(state["batches"])
