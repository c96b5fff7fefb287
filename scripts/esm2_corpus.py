"""Reads an esm2.cpp prepared corpus (`esm2 prepare`, src/data/corpus.h) with numpy.memmap and draws
training samples with the same recipe as src/data/sampler.h + src/data/masking.h, for the Hugging Face
peer scripts (bench/hf_throughput.py, scripts/hf_pretrain_baseline.py).

Same distribution, not the same draws: clusters are visited in a fresh random permutation per epoch, a
member is drawn uniformly, a sequence longer than max_len-2 residues gets a uniform random window, and
<cls>/<eos> are always kept; masking selects 15% of the non-special tokens, of which 80% become <mask>,
10% a random token of the whole 33-token vocabulary (our default all_tokens strategy) and 10% stay.
Randomness comes from numpy's PCG64, not our Philox streams, so the samples differ draw by draw.
"""
import json
import os

import numpy as np

FORMAT, VERSION = "esm2-corpus", 1
VOCAB = ["<cls>", "<pad>", "<eos>", "<unk>", "L", "A", "G", "V", "S", "E", "R", "T", "I", "D", "P", "K",
         "Q", "N", "F", "Y", "M", "H", "W", "C", "X", "B", "U", "Z", "O", ".", "-", "<null_1>", "<mask>"]
CLS, PAD, EOS, UNK, MASK = 0, 1, 2, 3, 32
VOCAB_SIZE = 33
IGNORE = -100
SPECIAL = np.zeros(256, dtype=bool)
SPECIAL[[CLS, PAD, EOS, UNK, MASK]] = True


class CorpusError(Exception):
    pass


class Corpus:
    """The arrays of one corpus directory, memory-mapped read-only; sizes checked against the manifest."""

    def __init__(self, path):
        self.path = path
        mpath = os.path.join(path, "manifest.json")
        try:
            with open(mpath) as f:
                m = json.load(f)
        except (OSError, ValueError) as e:
            raise CorpusError(f"{mpath}: cannot read: {e}") from None
        if m.get("format") != FORMAT or m.get("format_version") != VERSION:
            raise CorpusError(f"{mpath}: format {m.get('format')} v{m.get('format_version')}, "
                              f"this reader knows {FORMAT} v{VERSION}")
        self.manifest = m
        n, c, r, k = (int(m[key]) for key in ("num_sequences", "num_clusters", "num_residues",
                                             "num_cluster_members"))
        self.residues = self._map("residues.bin", np.uint8, r)             # [R]
        self.offsets = self._map("offsets.bin", np.uint64, n + 1)          # [n+1]
        self.cluster_offsets = self._map("cluster_offsets.bin", np.uint64, c + 1)  # [C+1]
        self.cluster_members = self._map("cluster_members.bin", np.uint32, k)      # [M]
        self.num_sequences, self.num_clusters = n, c
        self.lengths = np.diff(self.offsets).astype(np.int64)              # [n] residues per sequence
        self.cluster_sizes = np.diff(self.cluster_offsets).astype(np.int64)  # [C]
        if (self.cluster_sizes <= 0).any():
            raise CorpusError(f"{path}: a cluster has no member")

    def _map(self, name, dtype, count):
        p = os.path.join(self.path, name)
        want = count * np.dtype(dtype).itemsize
        listed = self.manifest.get("files", {}).get(name, {}).get("bytes")
        have = os.path.getsize(p) if os.path.exists(p) else -1
        if listed != want or have != want:
            raise CorpusError(f"{p}: {have} bytes, manifest lists {listed}, counts imply {want}")
        return np.memmap(p, dtype=dtype, mode="r", shape=(count,)) if count else np.zeros(0, dtype)


class Sampler:
    """Endless stream of cropped training samples (token arrays incl. <cls>/<eos>); its state is a
    small dict (epoch permutation position + the numpy generator state) for exact resume."""

    def __init__(self, corpus, seed, max_len=1024):
        self.c, self.max_len = corpus, max_len
        self.rng = np.random.default_rng(seed)
        self.epoch, self.pos = 0, 0
        self.perm = self.rng.permutation(corpus.num_clusters)

    def state(self):
        return {"epoch": self.epoch, "pos": self.pos, "perm": self.perm, "rng": self.rng.bit_generator.state}

    def set_state(self, s):
        self.epoch, self.pos, self.perm = s["epoch"], s["pos"], np.asarray(s["perm"])
        self.rng.bit_generator.state = s["rng"]

    def next(self):
        if self.pos == len(self.perm):
            self.epoch, self.pos = self.epoch + 1, 0
            self.perm = self.rng.permutation(self.c.num_clusters)
        cl = int(self.perm[self.pos])
        self.pos += 1
        first = int(self.c.cluster_offsets[cl])
        seq = int(self.c.cluster_members[first + int(self.rng.integers(self.c.cluster_sizes[cl]))])
        start, length = int(self.c.offsets[seq]), int(self.c.lengths[seq])
        keep = self.max_len - 2
        if length > keep:
            start += int(self.rng.integers(length - keep + 1))
            length = keep
        out = np.empty(length + 2, dtype=np.int64)
        out[0], out[-1] = CLS, EOS
        out[1:-1] = self.c.residues[start:start + length]
        return out


def mask_tokens(tokens, rng, mask_prob=0.15, mask_token_prob=0.8, random_token_prob=0.1):
    """(input_ids, labels) of one sample: the recipe of src/data/masking.h with numpy randomness."""
    u = rng.random(len(tokens))
    selected = (u < mask_prob) & ~SPECIAL[tokens]
    ids = tokens.copy()
    ids[selected & (u < mask_prob * mask_token_prob)] = MASK
    rnd = selected & (u >= mask_prob * mask_token_prob) & (u < mask_prob * (mask_token_prob + random_token_prob))
    ids[rnd] = rng.integers(VOCAB_SIZE, size=int(rnd.sum()))
    labels = np.where(selected, tokens, IGNORE)
    return ids, labels


def pad_batch(samples, multiple=8, pad_to=None):
    """Right-pads masked samples [(ids, labels)] to the longest (rounded up to `multiple`, as HF's
    collator with pad_to_multiple_of does), or to exactly `pad_to` (padding="max_length", what
    torch.compile users do to keep one static shape): input_ids, attention_mask, labels, each [B, Lmax]."""
    lmax = max(len(i) for i, _ in samples)
    lmax = pad_to if pad_to else -(-lmax // multiple) * multiple
    b = len(samples)
    ids = np.full((b, lmax), PAD, dtype=np.int64)
    att = np.zeros((b, lmax), dtype=np.int64)
    lab = np.full((b, lmax), IGNORE, dtype=np.int64)
    for r, (i, l) in enumerate(samples):
        ids[r, :len(i)], att[r, :len(i)], lab[r, :len(i)] = i, 1, l
    return ids, att, lab


def full_rows(sampler, rng, rows, row_len):
    """Rows of exactly row_len real tokens: sampled sequences (<cls> … <eos>) concatenated and cut.
    Attention spans the whole row, so this is the throughput upper bound of an HF model (every slot a
    real token), not a correct packed-training batch (HF cannot keep sequences of a row apart)."""
    out = []
    for _ in range(rows):
        parts, n = [], 0
        while n < row_len:
            t = sampler.next()
            parts.append(t)
            n += len(t)
        out.append(mask_tokens(np.concatenate(parts)[:row_len], rng))
    return pad_batch(out, multiple=1)


# Model shapes of src/model/config.cpp model_preset(): (layers, hidden, heads, ffn).
PRESETS = {
    "demo": (4, 128, 8, 512), "8M": (8, 320, 20, 1280), "esm2_t6_8M": (6, 320, 20, 1280),
    "35M": (12, 480, 20, 1920), "150M": (30, 640, 20, 2560), "650M": (33, 1280, 20, 5120),
    "3B": (36, 2560, 40, 10240), "15B": (48, 5120, 40, 20480),
}


def train_flops_per_token(preset, seq_eff):
    """performance.md: 6·N_matmul + 6·L·seq_eff·d (the formula of ModelConfig::train_flops_per_token)."""
    layers, d, _, f = PRESETS[preset]
    n_matmul = layers * (4 * d * d + 2 * d * f) + d * d + VOCAB_SIZE * d
    return 6.0 * n_matmul + 6.0 * layers * seq_eff * d


def hf_config(preset, attn_implementation="sdpa", max_position_embeddings=1026):
    """transformers.EsmConfig of a preset, as esm2.cpp writes config.json (src/io/hf_config.cpp)."""
    import transformers
    layers, d, heads, f = PRESETS[preset]
    return transformers.EsmConfig(
        vocab_size=VOCAB_SIZE, hidden_size=d, num_hidden_layers=layers, num_attention_heads=heads,
        intermediate_size=f, hidden_act="gelu", hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
        max_position_embeddings=max_position_embeddings, initializer_range=0.02, layer_norm_eps=1e-5,
        position_embedding_type="rotary", emb_layer_norm_before=False, token_dropout=True,
        mask_token_id=MASK, pad_token_id=PAD, architectures=["EsmForMaskedLM"], tie_word_embeddings=True,
        attn_implementation=attn_implementation)


def new_hf_model(preset, attn_implementation="sdpa"):
    """A randomly initialised EsmForMaskedLM (transformers' own init), built on the current default
    device (use `with torch.device("cuda"):`: CPU init of 650M takes longer than a benchmark)."""
    import transformers
    model = transformers.EsmForMaskedLM(hf_config(preset, attn_implementation))
    if getattr(model.config, "_attn_implementation", None) != attn_implementation:
        model.set_attn_implementation(attn_implementation)
    return model
