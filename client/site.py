"""A hospital site: where its data is, what it holds, and its cache of the frozen encoder.

Only what ``describe`` needs is imported with this module; torch and the model come in
with the first method that needs them (see ``core.describe``).

In deployment a SuperNode names its site and data in its node config
(``--node-config "site='hospA' data-dir='/data/hospA'"``, optionally ``cache-dir``). In
simulation a node only knows its ``partition-id``; the run config maps partitions to
sites (``sim-sites = "hospA,hospB"``) under ``sim-data-root``, and their caches under
``sim-cache-root``. A site's cache holds the frozen encoder, the search's supernet weights
and its privacy ledger; nothing in it leaves the site.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING

from flwr.app import ArrayRecord, ConfigRecord, Context, RecordDict

from core.data import TaskDataset, discover
from core.describe import SHA256, SITE, DatasetRecord, SiteRecord, serves
from core.io import atomic_write_bytes
from core.records import flat

if TYPE_CHECKING:
    import torch

    from core.local.private import PrivacyLedger
    from core.model import Encoder, EncoderConfig

log = logging.getLogger(__name__)


class SiteError(RuntimeError):
    """A site that cannot serve a request (no data, no matching dataset, no encoder)."""


@dataclass(frozen=True)
class Site:
    """One hospital's node."""

    name: str
    data_dir: Path
    cache_dir: Path
    max_epsilon: float = 0.0
    """The site's own privacy limit (node config ``max-epsilon``; 0: none)."""

    @classmethod
    def from_context(cls, context: Context) -> Site:
        """The site a ClientApp serves, from node config (deployment) or run config (simulation).

        Raises:
            SiteError: if neither says where the data is.
        """
        node, run = context.node_config, context.run_config
        if "data-dir" in node:
            data_dir = Path(str(node["data-dir"]))
            name = str(node.get("site", data_dir.name))
            cache = Path(str(node.get("cache-dir", data_dir / ".csfl-cache")))
        elif "partition-id" in node and "sim-sites" in run:
            sites = [s for s in str(run["sim-sites"]).split(",") if s]
            name = sites[int(node["partition-id"])]
            data_dir = Path(str(run["sim-data-root"])) / name
            # a simulation's phantoms may serve several runs (a benchmark's methods, a
            # privacy curve's settings); each run's sites keep their own cache and ledger
            root = run.get("sim-cache-root")
            cache = Path(str(root)) / name if root else data_dir / ".csfl-cache"
        else:
            raise SiteError("node config needs data-dir (and site) to find this site's data")
        return cls(name, data_dir, cache, _max_epsilon(node.get("max-epsilon", 0.0)))

    @cached_property
    def datasets(self) -> list[TaskDataset]:
        """The datasets found in the data folder (problems are logged, not raised)."""
        found, problems = discover(self.data_dir)
        for problem in problems:
            log.warning("site %s: %s", self.name, problem)
        return found

    def describe(self) -> RecordDict:
        """What the server may know about this site.

        Its name, each dataset's structures and case count, and the encoder hashes it
        caches; no case identifiers, no images.
        """
        record = RecordDict()
        stems = (
            p.stem.removeprefix("encoder-") for p in self.cache_dir.glob("encoder-*.safetensors")
        )
        cached = sorted(s for s in stems if SHA256.fullmatch(s))
        about = SiteRecord(self.name, tuple(cached), len(self.datasets))
        record[SITE] = ConfigRecord(flat(about, wire=True))
        for i, ds in enumerate(self.datasets):
            dataset = DatasetRecord(ds.labels.structures, len(ds.cases))
            record[DatasetRecord.key(i)] = ConfigRecord(flat(dataset, wire=True))
        return record

    def dataset_for(self, structures: tuple[str, ...], partial: bool = False) -> TaskDataset:
        """The first dataset that labels all of ``structures`` (``partial``: any of them).

        Raises:
            SiteError: if none does.
        """
        for ds in self.datasets:
            if serves(ds.labels.structures, structures, partial):
                return ds
        which = "any" if partial else "all"
        raise SiteError(f"site {self.name}: no dataset labels {which} of {list(structures)}")

    def _cache_path(self, sha: str) -> Path:
        return self.cache_dir / f"encoder-{sha}.safetensors"

    def encoder(self, sha: str, config: EncoderConfig, sent: ArrayRecord | None) -> Encoder:
        """The frozen encoder with this hash: from the message if sent, else from the cache.

        Raises:
            SiteError: if it is neither sent nor cached, or does not hash as announced.
        """
        from safetensors.torch import load_file

        from core.model import Encoder, state_bytes
        from core.payload import PayloadError, record_to_state

        encoder = Encoder(config)
        if sent is not None:
            try:
                encoder.load_state_dict(
                    record_to_state(sent, encoder.state_dict(), f"{self.name}: encoder")
                )
            except PayloadError as e:
                raise SiteError(str(e)) from None
            if encoder.weights_sha256() != sha:
                raise SiteError(f"site {self.name}: the encoder sent does not hash to {sha[:12]}")
            atomic_write_bytes(self._cache_path(sha), state_bytes(encoder.state_dict()))
        elif self._cache_path(sha).is_file():
            encoder.load_state_dict(load_file(self._cache_path(sha)))
            if encoder.weights_sha256() != sha:
                self._cache_path(sha).unlink()
                raise SiteError(f"site {self.name}: cached encoder {sha[:12]} is corrupt; dropped")
        else:
            raise SiteError(f"site {self.name}: encoder {sha[:12]} neither sent nor cached")
        return encoder.freeze()

    def save_local(self, name: str, module: torch.nn.Module) -> None:
        """Keep a module's weights in the site's cache (they never leave the site)."""
        from core.model import state_bytes

        atomic_write_bytes(self.cache_dir / f"{name}.safetensors", state_bytes(module.state_dict()))

    @property
    def privacy_ledger(self) -> PrivacyLedger:
        """What this site has spent on private tasks, in its cache (it never leaves)."""
        from core.local.private import PrivacyLedger

        return PrivacyLedger(self.cache_dir / "privacy-ledger.json", self.max_epsilon)

    def load_local(self, name: str, module: torch.nn.Module) -> bool:
        """Restore weights kept by :meth:`save_local`; False if none fit ``module``."""
        from safetensors.torch import load_file

        path = self.cache_dir / f"{name}.safetensors"
        if not path.is_file():
            return False
        state = load_file(path)
        expected = module.state_dict()
        if set(state) != set(expected) or any(state[k].shape != expected[k].shape for k in state):
            log.warning("site %s: cached %s does not fit; starting afresh", self.name, name)
            return False
        module.load_state_dict(state)
        return True

    @staticmethod
    def threads(context: Context) -> None:
        """Limit torch's threads where the run config asks (one CPU per simulated client)."""
        import torch

        n = int(context.run_config.get("threads", 0))
        if n > 0:
            torch.set_num_threads(n)


MAX_EPSILON = 1000.0


def _max_epsilon(value: object) -> float:
    """Node config ``max-epsilon`` as a number in [0, :data:`MAX_EPSILON`].

    Raises:
        SiteError: naming the key and what it expects.
    """
    try:
        number = float(str(value))
    except ValueError:
        number = math.nan
    if not 0.0 <= number <= MAX_EPSILON:
        raise SiteError(
            f"node config max-epsilon {value!r}: expected a number in [0, {MAX_EPSILON:g}]"
        )
    return number
