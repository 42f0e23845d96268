"""A cheap byte-mutation program for fuzzing the monitor parsers.

Why a plain module: the monitor tests (through the ``mutate`` fixture) and the reliability fuzzer
(tests/reliability/mutate.py) drive the same program, so both import it from here.
"""


def apply_mutations(data: bytes, program: bytes) -> bytes:
    """Interpret ``program`` (3 bytes per step) as byte flips, truncations, insertions and deletions.

    Hypothesis draws one short binary per example and this turns it into mutations, which keeps each
    example cheap enough to run 10,000 of them per parser.
    """
    out = bytearray(data)
    for i in range(0, len(program) - 2, 3):
        op, a, b = program[i], program[i + 1], program[i + 2]
        pos = (a << 8 | b) % (len(out) + 1)
        kind = op % 5
        if kind == 0 and pos < len(out):
            out[pos] ^= 1 << (op >> 5)
        elif kind == 1:
            del out[pos:]
        elif kind == 2:
            out[pos:pos] = bytes((a,))
        elif kind == 3 and pos < len(out):
            del out[pos]
        elif kind == 4 and pos < len(out):
            out[pos] = b  # overwrite with an arbitrary byte (e.g. a stray frame delimiter)
    return bytes(out)
