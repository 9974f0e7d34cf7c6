"""Datasets. Everything here works offline; real downloads live beside the offline defaults."""
from __future__ import annotations

import functools
import os
from dataclasses import dataclass

import numpy as np
import torch

__all__ = ["Split", "SYMBOLIC", "symbolic", "two_moon"]


@dataclass
class Split:
    """Train and test tensors of a supervised task: ``x (N, d_in)``, ``y (N, d_out)``."""

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    input_names: list[str]
    output_names: list[str]


def _independence(x):
    x1, x2, x3, x4 = x.T
    return np.stack([(x1 + x3) ** 3, x2 ** 2 + np.sin(np.pi * x4)], 1)


def _feature_sharing(x):
    x1, x2, x3 = x.T
    return np.stack([x1 ** 2, x1 ** 2 + x2 ** 2, x1 ** 2 + x2 ** 2 + x3 ** 2], 1)


def _compositionality(x):
    x1, x2, x3, x4 = x.T
    return np.sqrt((x1 - x2) ** 2 + (x3 - x4) ** 2)[:, None]


# name -> (input dimension, function, LaTeX of each output) — the three tasks of seed 003 (BIMT §3.1).
SYMBOLIC = {
    "independence": (4, _independence, [r"$(x_1+x_3)^3$", r"$x_2^2+\sin(\pi x_4)$"]),
    "feature-sharing": (3, _feature_sharing, [r"$x_1^2$", r"$x_1^2+x_2^2$", r"$x_1^2+x_2^2+x_3^2$"]),
    "compositionality": (4, _compositionality, [r"$\sqrt{(x_1-x_2)^2+(x_3-x_4)^2}$"]),
}


def symbolic(name: str, seed: int, n_train: int = 100, n_test: int = 100,
             dtype: torch.dtype = torch.float32) -> Split:
    """A symbolic-formula regression task with inputs uniform in [-1, 1], drawn as in seed 003.

    The draws follow ``np.random.seed(seed); rand(n_train, d)*2-1; rand(n_test, d)*2-1`` so a recipe with
    the notebook's seed sees the notebook's data.
    """
    if name not in SYMBOLIC:
        raise ValueError(f"unknown symbolic task {name!r}; choose from {sorted(SYMBOLIC)}")
    if n_train < 1 or n_test < 1:
        raise ValueError("n_train and n_test must be positive")
    d, f, outs = SYMBOLIC[name]
    rs = np.random.RandomState(seed)
    xtr = rs.rand(n_train, d) * 2 - 1
    xte = rs.rand(n_test, d) * 2 - 1
    t = lambda a: torch.tensor(a, dtype=dtype)
    return Split(t(xtr), t(f(xtr)), t(xte), t(f(xte)), [f"$x_{i + 1}$" for i in range(d)], list(outs))


def two_moon(seed: int, n_train: int = 1000, n_test: int = 1000, noise: float = 0.1) -> Split:
    """BIMT's two-moon classification task: scikit-learn's interleaved half circles, labels 0/1 (long)."""
    from sklearn.datasets import make_moons
    if n_train < 2 or n_test < 2:
        raise ValueError("n_train and n_test must be at least 2")
    x, y = make_moons(n_train + n_test, noise=noise, random_state=seed)
    x, y = torch.tensor(x, dtype=torch.float32), torch.tensor(y, dtype=torch.long)
    return Split(x[:n_train], y[:n_train], x[n_train:], y[n_train:], ["$x_1$", "$x_2$"], ["class 0", "class 1"])


def _pair_split(table: np.ndarray, names: list[str], seed: int, train_fraction: float) -> Split:
    """All ``n × n`` operand pairs ``(a, b)`` with labels ``table[a, b]``, split at random as BIMT's notebooks."""
    if not 0 < train_fraction < 1:
        raise ValueError(f"train_fraction must be in (0, 1), got {train_fraction}")
    n = table.shape[0]
    a, b = np.meshgrid(np.arange(n), np.arange(n), indexing="ij")
    x, y = np.stack([a.ravel(), b.ravel()], 1), table.ravel()
    perm = np.random.RandomState(seed).permutation(n * n)
    n_train = int(n * n * train_fraction)
    tr, te = perm[:n_train], perm[n_train:]
    l = lambda v: torch.as_tensor(v, dtype=torch.long)
    return Split(l(x[tr]), l(y[tr]), l(x[te]), l(y[te]), ["a", "b"], names)


def modular_addition(p: int = 59, seed: int = 0, train_fraction: float = 0.8) -> Split:
    """BIMT's modular addition: ``x (N, 2)`` residue pairs (long), ``y = (a + b) mod p``; 80 % of the p² pairs
    train."""
    if p < 2:
        raise ValueError(f"the modulus must be at least 2, got {p}")
    r = np.arange(p)
    return _pair_split((r[:, None] + r[None, :]) % p, [str(k) for k in range(p)], seed, train_fraction)


def permutation_group(n: int = 4, seed: int = 0, train_fraction: float = 0.8) -> Split:
    """BIMT's permutation group S_n (S4: 24 elements in lexicographic order): ``x (N, 2)`` element pairs (long),
    ``y`` the index of the composition ``b ∘ a`` (``b[a[i]]``, the notebook's ``p2[p1]``). Class names are the
    permutations of 1…n with their parity, e.g. ``"2134-"``."""
    import itertools
    if not 2 <= n <= 5:
        raise ValueError(f"S_n is built for n in 2..5, got {n}")
    perms = list(itertools.permutations(range(n)))
    index = {q: k for k, q in enumerate(perms)}
    table = np.array([[index[tuple(np.array(q)[np.array(p)])] for q in perms] for p in perms])

    def name(q):
        inversions = sum(q[i] > q[j] for i in range(n) for j in range(i + 1, n))
        return "".join(str(v + 1) for v in q) + ("+" if inversions % 2 == 0 else "-")
    return _pair_split(table, [name(q) for q in perms], seed, train_fraction)


def in_context_regression(seed: int = 0, n_tasks: int = 10000, d: int = 1, pairs: int = 2,
                          train_fraction: float = 0.8) -> Split:
    """BIMT's in-context linear regression (notebook 3.4): per task a weight ``w ~ U[-1, 1]^d`` and ``pairs``
    points ``x ~ U[1, 3]^d`` with ``y = w·x``. A sequence interleaves ``(0, x_1), (y_1, 0), (0, x_2), …``
    (tokens of ``d + 1`` numbers, y first); ``x (N, 2·pairs − 1, d + 1)`` are its first tokens and ``y`` the
    next tokens, so ``y[:, ::2, 0]`` are the ``y_k`` to predict — the last one in context, from the earlier
    pairs. Float32; tasks split at random."""
    if not 0 < train_fraction < 1 or n_tasks < 2 or d < 1 or pairs < 1:
        raise ValueError("need n_tasks ≥ 2, d ≥ 1, pairs ≥ 1 and train_fraction in (0, 1)")
    g = torch.Generator().manual_seed(seed)
    w = torch.rand(n_tasks, d, generator=g) * 2 - 1
    x = torch.rand(n_tasks, pairs, d, generator=g) * 2 + 1
    y = torch.einsum("nd,ntd->nt", w, x)
    seq = torch.zeros(n_tasks, 2 * pairs, d + 1)
    seq[:, 0::2, 1:] = x
    seq[:, 1::2, 0] = y
    perm = torch.randperm(n_tasks, generator=g)
    tr, te = perm[:int(n_tasks * train_fraction)], perm[int(n_tasks * train_fraction):]
    inp, nxt = seq[:, :-1], seq[:, 1:]
    return Split(inp[tr], nxt[tr], inp[te], nxt[te], ["y", *[f"x{i + 1}" for i in range(d)]],
                 ["y", *[f"x{i + 1}" for i in range(d)]])


# ---- classification datasets -------------------------------------------------------------------

def _split_indices(n: int, test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    if not 0 < test_fraction < 1:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    perm = np.random.RandomState(seed).permutation(n)
    n_test = max(1, int(round(n * test_fraction)))
    return perm[n_test:], perm[:n_test]


def _cls_split(x: np.ndarray, y: np.ndarray, tr, te, names: list[str] | None = None) -> Split:
    t = lambda a: torch.as_tensor(a, dtype=torch.float32)
    l = lambda a: torch.as_tensor(a, dtype=torch.long)
    classes = names or [str(c) for c in range(int(y.max()) + 1)]
    return Split(t(x[tr]), l(y[tr]), t(x[te]), l(y[te]), [], classes)


def digits(seed: int = 0, test_fraction: float = 0.2, flat: bool = False) -> Split:
    """scikit-learn's bundled 8×8 digits (1797 images, offline), scaled to [0, 1].

    ``x`` is ``(N, 1, 8, 8)`` (or ``(N, 64)`` with ``flat``), ``y`` class indices 0–9; a seeded split.
    """
    from sklearn.datasets import load_digits
    d = load_digits()
    x = (d.data / 16.0).astype(np.float32)
    x = x if flat else x.reshape(-1, 1, 8, 8)
    tr, te = _split_indices(len(x), test_fraction, seed)
    return _cls_split(x, d.target, tr, te)


def mnist1d(seed: int = 0, flat: bool = True) -> Split:
    """MNIST-1D (Greydanus 2020), generated locally with the published arguments (4000 + 1000 samples, 40 dims).

    The published train/test split is kept; ``seed`` is accepted for a uniform signature. Generating takes a few
    seconds, so the arrays are kept for the process and in ``~/.cache/topotorch/mnist1d`` (keyed by the package
    version and its arguments; a damaged file is regenerated).
    """
    x, y, n = (a.copy() for a in _mnist1d_arrays())
    x = x if flat else x[:, None, :]
    return _cls_split(x, y, np.arange(n), np.arange(n, len(x)))


@functools.lru_cache(maxsize=1)
def _mnist1d_arrays() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    try:
        from mnist1d.data import get_dataset_args, make_dataset
    except ImportError as e:  # pragma: no cover - it is a dependency
        raise ImportError("mnist1d is needed: pip install mnist1d") from e
    import contextlib
    import hashlib
    import importlib.metadata
    import io
    import json
    from pathlib import Path
    args = get_dataset_args()
    key = json.dumps([importlib.metadata.version("mnist1d"), vars(args)], sort_keys=True, default=str)
    path = Path.home() / ".cache" / "topotorch" / "mnist1d" / f"{hashlib.sha256(key.encode()).hexdigest()[:16]}.npz"
    try:
        with np.load(path) as f:
            return f["x"], f["y"], f["n"]
    except Exception:  # not cached yet, or unreadable: generate it
        pass
    with contextlib.redirect_stdout(io.StringIO()):
        d = make_dataset(args)
    x = np.concatenate([d["x"], d["x_test"]]).astype(np.float32)
    y = np.concatenate([d["y"], d["y_test"]])
    n = np.asarray(len(d["x"]))
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp.npz")
        np.savez(tmp, x=x, y=y, n=n)
        os.replace(tmp, path)
    except OSError:  # a read-only home: generate each time
        pass
    return x, y, n


MNIST_FILES = {
    "train_images": "train-images-idx3-ubyte", "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte", "test_labels": "t10k-labels-idx1-ubyte",
}
MNIST_MIRRORS = ("https://ossci-datasets.s3.amazonaws.com/mnist/",
                 "https://storage.googleapis.com/cvdf-datasets/mnist/")


def read_idx(path) -> np.ndarray:
    """Read an IDX file (MNIST's format), gzipped or not; checks the magic number and the size."""
    import gzip
    from pathlib import Path
    path = Path(path)
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        raw = gzip.decompress(raw)
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise ValueError(f"{path}: not an IDX file (bad magic number)")
    dtypes = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
    if raw[2] not in dtypes:
        raise ValueError(f"{path}: unknown IDX data type 0x{raw[2]:02x}")
    ndim = raw[3]
    shape = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    dt = np.dtype(dtypes[raw[2]])
    body = raw[4 + 4 * ndim:]
    if len(body) != int(np.prod(shape)) * dt.itemsize:
        raise ValueError(f"{path}: IDX header says {shape} but the file holds {len(body)} bytes of data")
    return np.frombuffer(body, dtype=dt).reshape(shape)


def find_mnist(folder):
    """The folder holding MNIST IDX files: ``folder/mnist-t10k`` or ``folder`` itself; ``None`` when neither does."""
    from pathlib import Path
    for d in (Path(folder) / "mnist-t10k", Path(folder)):
        if _find_idx(d, MNIST_FILES["test_images"]) or _find_idx(d, MNIST_FILES["train_images"]):
            return d
    return None


def _find_idx(data_dir, stem: str):
    from pathlib import Path
    for name in (stem, stem + ".gz"):
        p = Path(data_dir) / name
        if p.is_file():
            return p
    return None


def download_mnist(data_dir, files=("train_images", "train_labels", "test_images", "test_labels")) -> None:
    """Fetch the MNIST IDX files into ``data_dir`` (needs a network); raises a clear error offline."""
    import urllib.request
    from pathlib import Path
    Path(data_dir).mkdir(parents=True, exist_ok=True)
    for key in files:
        stem = MNIST_FILES[key]
        if _find_idx(data_dir, stem):
            continue
        errors = []
        for mirror in MNIST_MIRRORS:
            try:
                tmp = Path(data_dir) / f".{stem}.gz.part"
                urllib.request.urlretrieve(mirror + stem + ".gz", tmp)
                tmp.replace(Path(data_dir) / (stem + ".gz"))
                break
            except Exception as e:  # network errors of every kind
                errors.append(f"{mirror}: {e}")
        else:
            raise FileNotFoundError(f"MNIST file {stem}(.gz) is not in {data_dir} and could not be downloaded "
                                    f"({'; '.join(errors)}). Put the IDX files there or use the digits data.")


def mnist(data_dir, seed: int = 0, download: bool = True, test_fraction: float = 0.2, flat: bool = False) -> Split:
    """MNIST from IDX files in ``data_dir`` (``*-idx3-ubyte`` or ``.gz``), downloading what is missing.

    With the training files present, the official split is used; with only the 10k test files (as in an
    offline mirror), those are split ``1 − test_fraction`` / ``test_fraction`` with ``seed``.
    """
    have = {k: _find_idx(data_dir, v) for k, v in MNIST_FILES.items()}
    if not (have["train_images"] and have["train_labels"]) and not (have["test_images"] and have["test_labels"]):
        if not download:
            raise FileNotFoundError(f"no MNIST IDX files in {data_dir}")
        download_mnist(data_dir)
        have = {k: _find_idx(data_dir, v) for k, v in MNIST_FILES.items()}
    load = lambda k: read_idx(have[k])
    if have["train_images"] and have["train_labels"] and have["test_images"] and have["test_labels"]:
        xtr, ytr, xte, yte = load("train_images"), load("train_labels"), load("test_images"), load("test_labels")
        x, y = np.concatenate([xtr, xte]), np.concatenate([ytr, yte])
        tr, te = np.arange(len(xtr)), np.arange(len(xtr), len(x))
    else:
        key = "train" if have["train_images"] else "test"
        x, y = load(f"{key}_images"), load(f"{key}_labels")
        tr, te = _split_indices(len(x), test_fraction, seed)
    if len(x) != len(y):
        raise ValueError(f"MNIST images ({len(x)}) and labels ({len(y)}) differ in number")
    x = (x.astype(np.float32) / 255.0)
    x = x.reshape(len(x), -1) if flat else x[:, None]
    return _cls_split(x, y.astype(np.int64), tr, te)


__all__ += ["digits", "mnist1d", "mnist", "read_idx", "download_mnist"]


# ---- language data ------------------------------------------------------------------------------

WORD_CLASSES = ["noun", "verb", "adjective", "function"]

_LEXICON = {
    "noun": "dog cat bird child teacher farmer doctor horse river tree house garden village king queen student "
            "baker sailor mountain forest city window letter song".split(),
    "verb_t": "sees chases finds likes helps follows watches greets visits paints carries calls".split(),
    "verb_i": "sleeps runs sings waits laughs swims dances falls".split(),
    "adjective": "big small red old young happy quiet bright dark green tall brave".split(),
    "det": "the a every some this".split(),
    "prep": "near under behind with beside".split(),
    "adverb": "slowly quickly often".split(),
}


@dataclass
class TokenData:
    """A tokenised corpus: ``train``/``val`` token ids, the vocabulary, and (for the grammar corpus) the word
    class of every vocabulary entry (``-1`` where none) and the validation sentences as id lists."""

    train: torch.Tensor
    val: torch.Tensor
    vocab: list[str]
    word_class: torch.Tensor | None = None
    val_sentences: list[list[int]] | None = None

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    def batch(self, split: str, batch_size: int, block_size: int, generator: torch.Generator | None = None):
        """Random windows: ``x (B, T)`` and next-token targets ``y (B, T)``."""
        data = self.train if split == "train" else self.val
        if len(data) <= block_size + 1:
            raise ValueError(f"{split} split has {len(data)} tokens, fewer than block_size + 2 = {block_size + 2}")
        ix = torch.randint(len(data) - block_size - 1, (batch_size,), generator=generator)
        off = torch.arange(block_size)
        return data[ix[:, None] + off], data[ix[:, None] + off + 1]


def _sentence(rs: np.random.RandomState) -> list[str]:
    pick = lambda k: _LEXICON[k][rs.randint(len(_LEXICON[k]))]

    def np_():
        words = [pick("det")]
        if rs.rand() < 0.5:
            words.append(pick("adjective"))
        words.append(pick("noun"))
        if rs.rand() < 0.2:
            words += [pick("prep"), pick("det"), pick("noun")]
        return words

    if rs.rand() < 0.6:
        vp = [pick("verb_t")] + np_()
    else:
        vp = [pick("verb_i")] + ([pick("adverb")] if rs.rand() < 0.4 else [])
    return np_() + vp + ["."]


def grammar_corpus(n_sentences: int = 20000, seed: int = 0, val_fraction: float = 0.1) -> TokenData:
    """Sentences from a small English-like grammar (word-level tokens), each word tagged with its class
    (noun, verb, adjective, function word), so contrasts such as nouns vs verbs are computed offline."""
    if n_sentences < 10:
        raise ValueError("n_sentences must be ≥ 10")
    rs = np.random.RandomState(seed)
    sents = [_sentence(rs) for _ in range(n_sentences)]
    vocab = sorted({w for k in _LEXICON for w in _LEXICON[k]} | {"."})
    stoi = {w: i for i, w in enumerate(vocab)}
    cls = {w: 0 for w in _LEXICON["noun"]}
    cls.update({w: 1 for w in _LEXICON["verb_t"] + _LEXICON["verb_i"]})
    cls.update({w: 2 for w in _LEXICON["adjective"]})
    word_class = torch.tensor([cls.get(w, 3) for w in vocab])
    n_val = max(2, int(n_sentences * val_fraction))
    ids = [[stoi[w] for w in s] for s in sents]
    flat = lambda ss: torch.tensor([t for s in ss for t in s], dtype=torch.long)
    return TokenData(flat(ids[n_val:]), flat(ids[:n_val]), vocab, word_class, ids[:n_val])


def text_corpus(path, val_fraction: float = 0.1) -> TokenData:
    """Byte-level tokens (vocabulary 256) of a text file, or of every ``*.txt`` file in a folder."""
    from pathlib import Path
    p = Path(path)
    if p.is_dir():
        files = sorted(p.rglob("*.txt"))
        if not files:
            raise FileNotFoundError(f"{p}: no .txt files in this folder")
        raw = b"\n".join(f.read_bytes() for f in files)
    elif p.is_file():
        raw = p.read_bytes()
    else:
        raise FileNotFoundError(f"{p}: no such text file or folder")
    if len(raw) < 100:
        raise ValueError(f"{p}: only {len(raw)} bytes of text; need at least 100")
    ids = torch.frombuffer(bytearray(raw), dtype=torch.uint8).long()
    n_val = max(1, int(len(ids) * val_fraction))
    vocab = [bytes([i]).decode("latin-1") for i in range(256)]
    return TokenData(ids[:-n_val], ids[-n_val:], vocab)


def hf_text(name: str = "HuggingFaceFW/fineweb-edu", config: str | None = "sample-10BT", data_files=None,
            max_bytes: int = 2_000_000, val_fraction: float = 0.05, text_field: str = "text") -> TokenData:
    """Byte-level tokens streamed from a Hugging Face dataset (FineWeb-Edu by default), read until
    ``max_bytes``. Needs the optional ``datasets`` package (``pip install topotorch[data]``) and, unless
    ``data_files`` points to local files (e.g. ``name="json"``), a network."""
    try:
        import datasets
    except ImportError:
        raise ImportError("streaming FineWeb-Edu needs the optional 'datasets' package: "
                          "pip install 'topotorch[data]'") from None
    kw = {"data_files": data_files} if data_files is not None else {}
    ds = datasets.load_dataset(name, config, split="train", streaming=True, **kw)
    buf, size = [], 0
    for row in ds:
        b = row[text_field].encode("utf-8") + b"\n"
        buf.append(b)
        size += len(b)
        if size >= max_bytes:
            break
    raw = b"".join(buf)[:max_bytes]
    if len(raw) < 100:
        raise ValueError(f"the stream gave only {len(raw)} bytes of text")
    ids = torch.frombuffer(bytearray(raw), dtype=torch.uint8).long()
    n_val = max(1, int(len(ids) * val_fraction))
    return TokenData(ids[:-n_val], ids[-n_val:], [bytes([i]).decode("latin-1") for i in range(256)])


class StreamTokens:
    """Tokens streamed from a Hugging Face dataset (FineWeb-Edu by default) without holding the corpus: documents
    are tokenized as they arrive, each followed by an end-of-text token, and packed into consecutive windows.

    The first ``val_docs`` documents are the validation split (read once, kept); the training documents after them
    are dealt round-robin to the ``world`` ranks (document ``i`` to rank ``i % world``). ``batch("train", B, T)``
    returns this rank's next ``B`` windows of ``T + 1`` tokens in order (the generator is not used: the stream is the
    order); ``batch("val", B, T, gen)`` draws random windows of the validation tokens. :meth:`state_dict` is the
    position (documents read, the tokens read but not yet used), and :meth:`load_state_dict` continues from it
    exactly — a resumed run reads the same tokens as a straight one (the skipped documents are read again, not
    tokenized).

    Args:
        documents: ``() -> iterator of texts`` (a fresh pass over the stream each call).
        encode: ``text -> list[int]``; ``eot``: the id appended after every document; ``vocab_size``: the model's.
        tokenizer: what :class:`topotorch.probe.language.LM` reads text with (``None``: UTF-8 bytes).
    """

    def __init__(self, documents, encode, eot: int, vocab_size: int, tokenizer=None, val_docs: int = 200,
                 rank: int = 0, world: int = 1):
        if val_docs < 1:
            raise ValueError(f"val_docs must be ≥ 1, got {val_docs}")
        self.documents, self.encode, self.eot, self.tokenizer = documents, encode, eot, tokenizer
        self._vocab_size, self.val_docs, self.rank, self.world = vocab_size, val_docs, rank, world
        self.word_class = self.val_sentences = None
        it = iter(documents())
        val = []
        for _ in range(val_docs):
            try:
                val.extend(encode(next(it)) + [eot])
            except StopIteration:
                break
        self.val = torch.tensor(val, dtype=torch.long)
        self._restart(0, [])

    @property
    def vocab_size(self) -> int:
        return self._vocab_size

    @property
    def vocab(self):
        return self.tokenizer

    def _restart(self, docs: int, buffer: list[int]) -> None:
        """Continue after ``docs`` training documents (of all ranks) with ``buffer``: this rank's tokens read but not
        yet used. The skipped documents are read again, not tokenized."""
        self._it = iter(self.documents())
        for _ in range(self.val_docs + docs):
            if next(self._it, None) is None:
                raise ValueError("the stream is shorter than the position to continue from")
        self._docs, self._buf = docs, list(buffer)

    def _fill(self, need: int) -> None:
        while len(self._buf) < need:
            text = next(self._it, None)
            if text is None:
                raise ValueError(f"the stream ran out after {self.val_docs + self._docs} documents; train for fewer "
                                 "steps or on more data")
            mine = self._docs % self.world == self.rank
            self._docs += 1
            if mine:
                self._buf.extend(self.encode(text) + [self.eot])

    def batch(self, split: str, batch_size: int, block_size: int, generator: torch.Generator | None = None):
        """``x (B, T)`` and next-token targets ``y (B, T)``."""
        if split != "train":
            if len(self.val) <= block_size + 1:
                raise ValueError(f"the {self.val_docs} validation documents hold {len(self.val)} tokens, fewer than "
                                 f"block_size + 2 = {block_size + 2}: raise val_docs")
            ix = torch.randint(len(self.val) - block_size - 1, (batch_size,), generator=generator)
            off = torch.arange(block_size)
            return self.val[ix[:, None] + off], self.val[ix[:, None] + off + 1]
        n = batch_size * (block_size + 1)
        self._fill(n)
        w = torch.tensor(self._buf[:n], dtype=torch.long).view(batch_size, block_size + 1)
        del self._buf[:n]  # the buffer holds only tokens read but not yet used
        return w[:, :-1], w[:, 1:]

    def state_dict(self) -> dict:
        """The position: training documents read (all ranks) and this rank's tokens read but not yet used."""
        return {"docs": self._docs, "buffer": list(self._buf)}

    def load_state_dict(self, state: dict) -> None:
        self._restart(int(state["docs"]), [int(t) for t in state["buffer"]])


def stream_tokens(name: str = "HuggingFaceFW/fineweb-edu", config: str | None = "sample-10BT", data_files=None,
                  tokenizer: str = "gpt2", val_docs: int = 200, rank: int = 0, world: int = 1,
                  text_field: str = "text") -> StreamTokens:
    """:class:`StreamTokens` from ``datasets.load_dataset(name, config, streaming=True)`` (``data_files``: local
    files instead, e.g. ``name="json"``), tokenized with GPT-2's BPE (``tokenizer="gpt2"``: the Hugging Face
    tokenizer, 50,257 ids padded to a vocabulary of 50,304 as nanoGPT and TopoLM; end-of-text 50256), a saved
    tokenizer folder, or ``"bytes"`` (UTF-8, vocabulary 256, documents separated by a newline). Needs the optional
    ``datasets`` (and, for BPE, ``transformers``) packages and, for the hub, a network."""
    try:
        import datasets
    except ImportError:
        raise ImportError("streaming a dataset needs the optional 'datasets' package: pip install 'topotorch[data]'") from None
    kw = {"data_files": data_files} if data_files else {}

    def documents():
        for row in datasets.load_dataset(name, config, split="train", streaming=True, **kw):
            yield row[text_field]
    if tokenizer == "bytes":
        return StreamTokens(documents, lambda t: list(t.encode("utf-8")), 10, 256, None, val_docs, rank, world)
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(tokenizer)
    eot = tok.eos_token_id
    vocab = ((len(tok) + 63) // 64) * 64  # padded to a multiple of 64 (GPT-2: 50,257 → 50,304)
    return StreamTokens(documents, lambda t: tok(t, add_special_tokens=False)["input_ids"], eot, vocab, tok,
                        val_docs, rank, world)


__all__ += ["WORD_CLASSES", "TokenData", "grammar_corpus", "text_corpus", "hf_text", "StreamTokens", "stream_tokens"]


# ---- classification datasets by name ---------------------------------------------------------------

DATASETS: dict = {}


def register_dataset(name: str):
    """Register ``loader(seed, data_dir, download, flat) -> Split`` under ``name`` (recipes' ``data`` key)."""
    def deco(fn):
        DATASETS[name] = fn
        return fn
    return deco


register_dataset("digits")(lambda seed, data_dir, download, flat: digits(seed, flat=flat))
register_dataset("mnist")(lambda seed, data_dir, download, flat: mnist(data_dir, seed, download=download, flat=flat))
register_dataset("mnist1d")(lambda seed, data_dir, download, flat: mnist1d(seed, flat=True))


def load_dataset(name: str, seed: int, data_dir: str = "data/mnist", download: bool = True, flat: bool = False) -> Split:
    """A classification :class:`Split` by name (a key of :data:`DATASETS`; add one with :func:`register_dataset`)."""
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; choose from {sorted(DATASETS)} or register one with "
                         "topotorch.data.register_dataset")
    return DATASETS[name](seed, data_dir, download, flat)
__all__ += ["DATASETS", "register_dataset", "load_dataset"]


# ---- BLiMP minimal pairs ----------------------------------------------------------------------------

def blimp(source: str = "nyu-mll/blimp", phenomena: list[str] | None = None) -> dict[str, list[tuple[str, str]]]:
    """BLiMP minimal pairs per phenomenon: ``{phenomenon: [(sentence_good, sentence_bad), …]}``.

    ``source`` is a folder of BLiMP-format ``*.jsonl`` files (one per phenomenon, fields ``sentence_good`` and
    ``sentence_bad``) or a Hugging Face dataset name (``nyu-mll/blimp``, read through the optional
    ``datasets`` package; needs a network the first time, cached after). ``phenomena`` selects some
    (default: every file in the folder; with the hub, required)."""
    import json
    from pathlib import Path
    p = Path(source)
    out: dict[str, list[tuple[str, str]]] = {}
    if p.is_dir():
        files = sorted(p.glob("*.jsonl"))
        if phenomena is not None:
            missing = [ph for ph in phenomena if not (p / f"{ph}.jsonl").is_file()]
            if missing:
                raise FileNotFoundError(f"{p}: no {missing[0]}.jsonl; phenomena here: {[f.stem for f in files]}")
            files = [p / f"{ph}.jsonl" for ph in phenomena]
        if not files:
            raise FileNotFoundError(f"{p}: no BLiMP .jsonl files in this folder")
        for f in files:
            pairs = []
            for n, line in enumerate(f.read_text().splitlines(), 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                    pairs.append((row["sentence_good"], row["sentence_bad"]))
                except (json.JSONDecodeError, KeyError, TypeError) as e:
                    raise ValueError(f"{f}:{n}: not a BLiMP pair with sentence_good and sentence_bad ({e})") from None
            out[f.stem] = pairs
        return out
    if "/" not in str(source) or p.suffix:
        raise FileNotFoundError(f"{source}: no such folder of BLiMP .jsonl files")
    if not phenomena:
        raise ValueError("name the phenomena to load from the hub, e.g. ['anaphor_gender_agreement']")
    try:
        import datasets
    except ImportError:
        raise ImportError("loading BLiMP from the hub needs the optional 'datasets' package: "
                          "pip install 'topotorch[data]' (or pass a folder of .jsonl files)") from None
    for ph in phenomena:
        try:
            ds = datasets.load_dataset(str(source), ph, split="train")
        except Exception as e:  # offline, unknown phenomenon: datasets raises many types
            raise RuntimeError(f"could not load BLiMP phenomenon {ph!r} from {source} ({type(e).__name__}: {e}); "
                               "offline, pass a folder of BLiMP .jsonl files instead") from None
        out[ph] = list(zip(ds["sentence_good"], ds["sentence_bad"]))
    return out


__all__ += ["blimp"]


# ---- TopoLM's stimulus tables -----------------------------------------------------------------------

STIMULI = {  # TopoLM (epflneuroailab/topolm) eval/stimuli/, as released; cite the papers behind them
    "fedorenko": "https://raw.githubusercontent.com/epflneuroailab/topolm/main/eval/stimuli/fedorenko_stimuli.csv",
    "elli": "https://raw.githubusercontent.com/epflneuroailab/topolm/main/eval/stimuli/elli_stimuli.csv",
}


def stimulus_table(name_or_path, cache_dir=None):
    """Path of a stimulus CSV: a file path as given, or ``fedorenko`` (language localizer, Fedorenko et al.
    2010) / ``elli`` (noun–verb pairs, Elli et al.), downloaded once into ``cache_dir`` (default
    ``~/.cache/topotorch/stimuli``); offline and not cached, a clear error."""
    import os
    import urllib.request
    from pathlib import Path
    p = Path(name_or_path)
    if p.is_file():
        return p
    if str(name_or_path) not in STIMULI:
        raise FileNotFoundError(f"{name_or_path}: no such stimulus file (or name one of {sorted(STIMULI)})")
    cache = Path(cache_dir or Path.home() / ".cache" / "topotorch" / "stimuli")
    dest = cache / Path(STIMULI[str(name_or_path)]).name
    if not dest.is_file():
        cache.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(f".{dest.name}.{os.getpid()}")
        try:
            with urllib.request.urlopen(STIMULI[str(name_or_path)], timeout=30) as r:
                tmp.write_bytes(r.read())
        except OSError as e:
            tmp.unlink(missing_ok=True)
            raise FileNotFoundError(f"could not download the {name_or_path} stimuli ({e}); offline, pass the CSV's "
                                    "path with --file") from None
        os.replace(tmp, dest)
    return dest


__all__ += ["STIMULI", "stimulus_table"]
