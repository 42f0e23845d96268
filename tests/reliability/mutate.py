"""A seeded mutation fuzzer: valid seeds, mutated fast enough to run 100,000 inputs per parser in CI.

Why not hypothesis: a hypothesis example costs about a millisecond of bookkeeping, so 100,000 per parser
would take minutes each; here an input costs a few microseconds on top of the parser. Why not atheris:
see ``FUZZER`` (the table in docs/reliability.md says which fuzzer ran).

Each input is one valid seed (or a splice of two) put through 1-6 stacked mutations: the monitor tests'
``apply_mutations`` program (bit flips, truncation, byte insert/delete/overwrite) driven by random bytes, plus
block operations that program cannot express -- duplicate or delete a range, insert a token from the
parser's dictionary (delimiters, keys, escape bytes, extreme numbers), insert random bytes, replace the whole
input with random bytes of random length. Everything comes from one ``random.Random(seed)``, so a failure
is reproduced by its (seed, index) pair, which :class:`Mutator` keeps as ``last``.
"""
from __future__ import annotations

import random
from typing import Sequence

from tests.appliance.sources.monitor.mutations import apply_mutations

FUZZER = ("seeded mutation fuzzer (tests/reliability/mutate.py; atheris 3.0.0 has a cp311 x86_64 wheel but no "
          "aarch64 one for the Jetson, and libFuzzer exits the process, so it would need a subprocess per parser)")

#: Bytes worth inserting into any input: boundaries and encodings that break naive parsers.
COMMON_TOKENS: tuple[bytes, ...] = (
    b"\x00", b"\xff", b"\x7f", b"\x80", b"\r\n", b"\n", b"\r", b"\t", b" ",
    b"\xc3\x28", b"\xed\xa0\x80", b"\xef\xbb\xbf",  # invalid UTF-8, a UTF-16 surrogate, a BOM
    b"0", b"-1", b"65535", b"4294967296", b"1e309", b"-1e309", b"9" * 40, b"nan", b"inf", b"-0",
)


class Mutator:
    """``next()`` -> one fuzz input built from ``seeds`` (see module docstring)."""

    def __init__(self, seeds: Sequence[bytes], *, seed: int, tokens: Sequence[bytes] = (), max_len: int = 8192) -> None:
        if not seeds:
            raise ValueError("Mutator needs at least one valid seed")
        self.seeds = [bytes(s) for s in seeds]
        self.tokens = tuple(tokens) + COMMON_TOKENS
        self.rng = random.Random(seed)
        self.seed = seed
        self.max_len = max_len
        self.count = 0
        self.last = b""

    def next(self) -> bytes:
        rng = self.rng
        data = bytearray(rng.choice(self.seeds))
        if rng.random() < 0.1:  # splice: head of one seed, tail of another
            other = rng.choice(self.seeds)
            data = data[:rng.randint(0, len(data))] + other[rng.randint(0, len(other)):]
        for _ in range(rng.randint(1, 6)):
            op = rng.randrange(8)
            n = len(data)
            if op <= 2:  # the monitor tests' byte program: flips, truncation, insert/delete/overwrite
                data = bytearray(apply_mutations(bytes(data), rng.randbytes(3 * rng.randint(1, 4))))
            elif op == 3:  # a dictionary token at a random place
                pos = rng.randint(0, n)
                data[pos:pos] = rng.choice(self.tokens)
            elif op == 4 and n:  # duplicate a range (repeated fields, runaway nesting)
                a = rng.randrange(n)
                b = min(n, a + rng.randint(1, 64))
                pos = rng.randint(0, n)
                data[pos:pos] = data[a:b] * rng.randint(1, 50)
            elif op == 5 and n:  # delete a range
                a = rng.randrange(n)
                del data[a:a + rng.randint(1, 32)]
            elif op == 6:  # random bytes somewhere
                pos = rng.randint(0, n)
                data[pos:pos] = rng.randbytes(rng.randint(1, 16))
            elif op == 7 and rng.random() < 0.05:  # rarely: pure noise of any length
                data = bytearray(rng.randbytes(rng.randint(0, 512)))
        self.count += 1
        self.last = bytes(data[:self.max_len])
        return self.last
