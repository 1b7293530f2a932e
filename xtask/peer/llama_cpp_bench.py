#!/usr/bin/env python3
"""llama.cpp peer driver for `cargo xtask bench --peer llama.cpp` (our code, not llama.cpp's).

Measures a GGUF model through llama-cpp-python's ctypes bindings the way llama.cpp's own
`tools/llama-bench/llama-bench.cpp` does, so the numbers compare with `thinker bench`:

* the model is loaded once (mmap, `LLAMA_LOAD_MODE_MMAP`, llama.cpp's default on CPU); weight
  repacking into extra buffer types (`use_extra_bufts`) is OFF unless `--repack`: repacked weights
  are copied into anonymous memory, which defeats mmap under a cgroup memory budget, and the
  same setting is used in and out of budgets so the scenarios compare;
* every test gets a fresh context with n_ctx = n_prompt + n_gen (unless `--ctx`), n_batch 2048,
  n_ubatch 512, F16 KV cache, flash attention `auto`, `swa_full` off, n_threads = n_threads_batch
  = `--threads`;
* `ppN`: one warm-up prompt run, then per repetition the KV cache is cleared and N random tokens
  (BOS first when the vocabulary adds one) are decoded in batches of n_batch, timed until
  `llama_synchronize`; t/s = N / time;
* `tgN`: one warm-up single-token decode, then per repetition the KV cache is cleared and N
  single-token decodes are timed (each followed by `llama_synchronize`, the next token random);
  t/s = N / time.

Output: one JSON object per test on stdout, with llama-bench's field names (`n_prompt`, `n_gen`,
`n_threads`, `samples_ns`, `samples_ts`, `avg_ts`, `stddev_ts`) plus the settings used, the
process's peak RSS (VmHWM) and the share of the model file already in the page cache at start. Logs go to stderr (llama.cpp's own only with `--verbose`).
`--info` prints the installed version and build facts as one JSON object and exits.
"""

import argparse
import ctypes
import json
import math
import os
import random
import sys
import time

N_BATCH = 2048
N_UBATCH = 512


def fail(msg):
    print(f"llama_cpp_bench: error: {msg}", file=sys.stderr)
    sys.exit(2)


try:
    import llama_cpp
    import llama_cpp.llama_cpp as L
except Exception as e:  # noqa: BLE001 - any import failure means the same thing here
    fail(f"cannot import llama_cpp ({e}); run `cargo xtask peer-setup`")


def lib_dir():
    return os.path.join(os.path.dirname(os.path.abspath(llama_cpp.__file__)), "lib")


def knows_arch(arch):
    """True when one of the installed llama.cpp libraries names the architecture `arch`."""
    needle = arch.encode() + b"\0"
    d = lib_dir()
    for name in sorted(os.listdir(d)) if os.path.isdir(d) else []:
        if ".so" in name or name.endswith((".dylib", ".dll")):
            with open(os.path.join(d, name), "rb") as f:
                if needle in f.read():
                    return True
    return False


def status_bytes(field):
    """A `kB` field of /proc/self/status in bytes (None when unavailable)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def cached_fraction(path):
    """Share of `path`'s pages in the page cache (mincore), or None where that cannot be asked.

    A memory cgroup charges a cached page to the group that first read it, so pages another
    process keeps cached (e.g. its own mmap of the same file) cost this process nothing: under a
    budget the number says how much the limit could not bind."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.mmap.restype = ctypes.c_void_p
        libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                              ctypes.c_int, ctypes.c_long]
        libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p]
        libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
        size = os.path.getsize(path)
        if size == 0:
            return 0.0
        page = os.sysconf("SC_PAGE_SIZE")
        fd = os.open(path, os.O_RDONLY)
        try:
            addr = libc.mmap(None, size, 1, 1, fd, 0)  # PROT_READ, MAP_SHARED
            if addr in (None, ctypes.c_void_p(-1).value):
                return None
            try:
                vec = (ctypes.c_ubyte * ((size + page - 1) // page))()
                if libc.mincore(addr, size, vec) != 0:
                    return None
                return sum(b & 1 for b in vec) / len(vec)
            finally:
                libc.munmap(addr, size)
        finally:
            os.close(fd)
    except (OSError, AttributeError):
        return None


def info():
    return {
        "llama_cpp_python": llama_cpp.__version__,
        "system_info": L.llama_print_system_info().decode(errors="replace").strip(),
        "knows_smallthinker": knows_arch("smallthinker"),
        "lib_dir": lib_dir(),
        "python": sys.version.split()[0],
    }


_NULL_LOG = L.llama_log_callback(lambda level, text, user: None)


class Bench:
    """A loaded model and the llama-bench style tests on it."""

    def __init__(self, args):
        self.args = args
        self.cached_at_start = cached_fraction(args.model)
        if not args.verbose:
            L.llama_log_set(_NULL_LOG, ctypes.c_void_p(0))
        L.llama_backend_init()
        mp = L.llama_model_default_params()
        mp.n_gpu_layers = 0
        mp.load_mode = L.LLAMA_LOAD_MODE_MMAP
        mp.use_extra_bufts = bool(args.repack)
        t0 = time.perf_counter()
        self.model = L.llama_model_load_from_file(args.model.encode(), mp)
        self.load_s = time.perf_counter() - t0
        if not self.model:
            fail(f"llama.cpp could not load {args.model} (run with --verbose for its log)")
        self.vocab = L.llama_model_get_vocab(self.model)
        self.n_vocab = L.llama_vocab_n_tokens(self.vocab)
        self.add_bos = bool(L.llama_vocab_get_add_bos(self.vocab))
        self.bos = L.llama_vocab_bos(self.vocab)
        buf = ctypes.create_string_buffer(256)
        L.llama_model_desc(self.model, buf, len(buf))
        self.desc = buf.value.decode(errors="replace")
        self.rng = random.Random(args.seed)

    def token(self):
        return self.rng.randrange(self.n_vocab)

    def context(self, n_ctx):
        cp = L.llama_context_default_params()
        cp.n_ctx = n_ctx
        cp.n_batch = N_BATCH
        cp.n_ubatch = N_UBATCH
        cp.n_threads = self.args.threads
        cp.n_threads_batch = self.args.threads
        cp.swa_full = False
        ctx = L.llama_init_from_model(self.model, cp)
        if not ctx:
            fail(f"llama.cpp could not create a context of {n_ctx} tokens")
        return ctx

    def decode(self, ctx, batch, tokens):
        """Decodes `tokens` as one batch of sequence 0 after what the KV cache holds."""
        pos0 = L.llama_memory_seq_pos_max(L.llama_get_memory(ctx), 0) + 1
        n = len(tokens)
        for i, t in enumerate(tokens):
            batch.token[i] = t
            batch.pos[i] = pos0 + i
            batch.n_seq_id[i] = 1
            batch.seq_id[i][0] = 0
            batch.logits[i] = 1 if i == n - 1 else 0
        batch.n_tokens = n
        res = L.llama_decode(ctx, batch)
        if res != 0:
            fail(f"llama_decode returned {res}")

    def prompt(self, ctx, batch, n_prompt):
        done = 0
        while done < n_prompt:
            n = min(n_prompt - done, N_BATCH)
            toks = [self.token() for _ in range(n)]
            if done == 0 and self.add_bos:
                toks[0] = self.bos
            self.decode(ctx, batch, toks)
            done += n
        L.llama_synchronize(ctx)

    def gen(self, ctx, batch, n_gen):
        tok = self.bos if self.add_bos else self.token()
        for _ in range(n_gen):
            self.decode(ctx, batch, [tok])
            L.llama_synchronize(ctx)
            tok = self.token()

    def run(self, n_prompt, n_gen):
        a = self.args
        n_ctx = a.ctx if a.ctx > 0 else n_prompt + n_gen
        ctx = self.context(n_ctx)
        batch = L.llama_batch_init(N_BATCH, 0, 1)
        mem = L.llama_get_memory(ctx)
        try:
            L.llama_set_n_threads(ctx, a.threads, a.threads)
            L.llama_memory_clear(mem, False)
            if not a.no_warmup:
                if n_prompt > 0:
                    self.prompt(ctx, batch, n_prompt)
                if n_gen > 0:
                    self.gen(ctx, batch, 1)
            samples_ns = []
            for _ in range(a.reps):
                L.llama_memory_clear(mem, False)
                t0 = time.perf_counter_ns()
                if n_prompt > 0:
                    self.prompt(ctx, batch, n_prompt)
                if n_gen > 0:
                    self.gen(ctx, batch, n_gen)
                samples_ns.append(time.perf_counter_ns() - t0)
            n_ctx_real = L.llama_n_ctx(ctx)
        finally:
            L.llama_batch_free(batch)
            L.llama_free(ctx)
        ts = [1e9 * (n_prompt + n_gen) / t for t in samples_ns]
        avg = sum(ts) / len(ts) if ts else float("nan")
        sd = (
            math.sqrt(sum((x - avg) ** 2 for x in ts) / (len(ts) - 1))
            if len(ts) > 1
            else 0.0
        )
        return {
            "test": f"pp{n_prompt}" if n_prompt > 0 else f"tg{n_gen}",
            "n_prompt": n_prompt,
            "n_gen": n_gen,
            "n_threads": a.threads,
            "n_batch": N_BATCH,
            "n_ubatch": N_UBATCH,
            "n_ctx": n_ctx_real,
            "reps": a.reps,
            "warmup": not a.no_warmup,
            "seed": a.seed,
            "samples_ns": samples_ns,
            "samples_ts": ts,
            "avg_ts": avg,
            "stddev_ts": sd,
            "model_filename": a.model,
            "model_type": self.desc,
            "model_size": L.llama_model_size(self.model),
            "model_n_params": L.llama_model_n_params(self.model),
            "load_mode": "mmap",
            "repack": bool(a.repack),
            "load_seconds": self.load_s,
            "model_cached_at_start": self.cached_at_start,
            "loadavg_1min": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
            "peak_rss_bytes": status_bytes("VmHWM"),
            "rss_file_bytes": status_bytes("RssFile"),
            "rss_anon_bytes": status_bytes("RssAnon"),
            "llama_cpp_python": llama_cpp.__version__,
            "system_info": L.llama_print_system_info().decode(errors="replace").strip(),
        }


def counts(text):
    """`128,256` -> [128, 256]; `0` or empty -> []."""
    out = []
    for part in (text or "").split(","):
        part = part.strip()
        if part:
            n = int(part)
            if n < 0:
                raise argparse.ArgumentTypeError(f"negative token count {n}")
            if n > 0:
                out.append(n)
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--info", action="store_true", help="print version/build facts and exit")
    p.add_argument("-m", "--model", help="GGUF model path")
    p.add_argument("-t", "--threads", type=int, default=os.cpu_count() or 1)
    p.add_argument("-p", "--n-prompt", type=counts, default=[128], help="e.g. 128 or 128,512; 0 = none")
    p.add_argument("-n", "--n-gen", type=counts, default=[64], help="e.g. 64; 0 = none")
    p.add_argument("-r", "--reps", type=int, default=5)
    p.add_argument("-c", "--ctx", type=int, default=0, help="context size (0: n_prompt + n_gen per test, as llama-bench)")
    p.add_argument("-s", "--seed", type=int, default=1234, help="seed of the random tokens")
    p.add_argument("--repack", action="store_true", help="let llama.cpp repack weights (use_extra_bufts)")
    p.add_argument("--no-warmup", action="store_true")
    p.add_argument("-v", "--verbose", action="store_true", help="show llama.cpp's log on stderr")
    a = p.parse_args(argv)
    if a.info:
        print(json.dumps(info()))
        return 0
    if not a.model:
        p.error("--model is required")
    if not os.path.isfile(a.model):
        fail(f"no model file at {a.model}")
    if a.threads < 1 or a.reps < 1:
        p.error("--threads and --reps must be at least 1")
    if not a.n_prompt and not a.n_gen:
        p.error("nothing to measure: give -p and/or -n")
    b = Bench(a)
    tests = [(n, 0) for n in a.n_prompt] + [(0, n) for n in a.n_gen]
    for n_prompt, n_gen in tests:
        print(json.dumps(b.run(n_prompt, n_gen)), flush=True)
    L.llama_model_free(b.model)
    return 0


if __name__ == "__main__":
    sys.exit(main())
