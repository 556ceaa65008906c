"""An endless, resumable iterator over the training loader (the trainer's checkpointed data position)."""

from __future__ import annotations

from train.signals import stop_signals_blocked


class DataCursor:
    """An endless iterator over the loader that remembers where it is, for exact resume (checkpointed object)."""

    def __init__(self, loader, sampler) -> None:
        self.loader, self.sampler = loader, sampler
        self._iter = None
        self._last = None

    def next(self) -> dict:
        while True:
            if self._iter is None:
                with stop_signals_blocked():  # loader workers start deaf to SLURM's signals (train.signals)
                    self._iter = iter(self.loader)
            try:
                self._last = next(self._iter)
                return self._last
            except StopIteration:
                self._iter = None

    def close(self) -> None:
        """Let go of the loader's iterator, which stops its worker processes (the next `next` starts new ones)."""
        self._iter = None

    def state_dict(self) -> dict:
        return self.sampler.state_dict(after=self._last) if self._last is not None else self.sampler.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.sampler.load_state_dict(state)
        self._iter, self._last = None, None
