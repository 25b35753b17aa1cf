"""``--cache_mode``: the encoded bytes of image files kept in memory, so that each file is read from disk once.

Each process caches its share of a node's images: index ``i`` of the dataset belongs to the process with local rank
``i % local_size`` (every process on one node holds a different share, so the node holds the dataset once), and the
node-aware sampler (``datasets.node_sampler``) gives each process only indices of its share. A single process caches
everything. The share is read when the dataset is built, in the main process, so DataLoader workers (forked from it)
find it in memory; a file outside the share is read on first use and kept by the process that read it.
"""
from pathlib import Path

from datasets.image_file import read_file_bytes


class ImageBytesCache:
    """File bytes by path. ``paths``: the dataset's image files in index order; this process (``local_rank`` of
    ``local_size`` on its node) reads ``paths[i]`` for ``i % local_size == local_rank`` now."""

    def __init__(self, paths: list[Path], local_rank: int = 0, local_size: int = 1):
        if not 0 <= local_rank < local_size:
            raise ValueError(f"local_rank must be in 0..{local_size - 1}, got {local_rank}")
        self._bytes: dict[Path, bytes] = {}
        for index, path in enumerate(paths):
            if index % local_size == local_rank:
                try:
                    self._bytes[Path(path)] = read_file_bytes(path)
                except OSError:
                    pass  # reading it again when it is used gives the error that names the image

    def __len__(self) -> int:
        return len(self._bytes)

    def __contains__(self, path: Path) -> bool:
        return Path(path) in self._bytes

    def nbytes(self) -> int:
        """Bytes held."""
        return sum(len(b) for b in self._bytes.values())

    def get(self, path: str | Path) -> bytes:
        """The bytes of ``path``, read (and kept) if not held yet; OSError as ``open`` raises it."""
        path = Path(path)
        data = self._bytes.get(path)
        if data is None:
            data = self._bytes[path] = read_file_bytes(path)
        return data
