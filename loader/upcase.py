"""Windows' case folding for names: RtlUpcaseUnicodeChar, one UTF-16 unit at a time.

The kernel compares names (object names, file names, module names) case-insensitively by
upcasing both with the NLS upcase table (RtlUpcaseUnicodeChar; NTFS keeps a copy as $UpCase),
never with Unicode's full case folding: U+212A KELVIN SIGN is already upper case and stays
itself, so it never matches 'K'/'k' (Python's ``str.lower`` maps it to 'k'); and sharp s,
U+0131 (dotless i), U+017F (long s) and U+00B5 (micro sign) have no upper case there.

The table is Wine 8.0's ``l_intl.nls`` (the file its ntdll serves RtlUpcaseUnicodeChar from,
fetched with the other NLS files, ``loader.wine_nls``): 16-bit words, ``[0]`` the header
size, ``[1]`` the upcase table's size, the upcase table from word 2, the lowercase table
after it. Each table is Wine's three-level ``casemap``: the delta added to ``ch`` (mod 2**16)
is ``t[t[t[ch >> 8] + ((ch >> 4) & 0xf)] + (ch & 0xf)]``.

Without the file the table is built from the rule it follows (checked equal on all 65,536
units against Wine 8.0's file, ``tests/test_upcase.py``): a unit upcases to its Unicode
upper case when that is one unit whose lower case is the unit again (one-to-one pairs only),
or else to the titlecase letter whose lower case it is (ᾀ -> ᾈ); everything else is itself.
"""

from __future__ import annotations

import struct
from functools import lru_cache

UNITS = 0x10000


def parse_l_intl(data: bytes) -> tuple[int, ...]:
    """The upcase table (one entry per UTF-16 unit) of an ``l_intl.nls`` file's bytes."""
    if len(data) < 8 or len(data) % 2:
        raise ValueError(f"l_intl.nls: {len(data)} bytes is not a case table")
    words = struct.unpack(f"<{len(data) // 2}H", data)
    table = words[2 : 2 + words[1]]
    try:
        return tuple(
            (ch + table[table[table[ch >> 8] + ((ch >> 4) & 0xF)] + (ch & 0xF)]) & 0xFFFF
            for ch in range(UNITS)
        )
    except IndexError:
        raise ValueError("l_intl.nls: the upcase table points outside itself") from None


def rule_table() -> tuple[int, ...]:
    """The upcase table built from the rule (see the module docstring)."""
    table = list(range(UNITS))
    for ch in range(UNITS):
        if 0xD800 <= ch < 0xE000:
            continue  # surrogates are upcased as themselves
        up = chr(ch).upper()
        if len(up) == 1 and up != chr(ch) and up.lower() == chr(ch):
            table[ch] = ord(up)
    for ch in range(UNITS):  # titlecase letters whose lower case has no one-unit upper case
        c = chr(ch)
        if 0xD800 <= ch < 0xE000 or not c.istitle() or c.isupper():
            continue
        low = c.lower()
        if len(low) == 1 and low != c and len(low.upper()) > 1 and table[ord(low)] == ord(low):
            table[ord(low)] = ch
    return tuple(table)


@lru_cache(maxsize=1)
def upcase_table() -> tuple[int, ...]:
    """Wine 8.0's table when its NLS files are present (never fetched here), else the rule's."""
    from loader.errors import LoaderError
    from loader.wine_nls import find_nls_dir

    try:
        return parse_l_intl((find_nls_dir(fetch=False) / "l_intl.nls").read_bytes())
    except (OSError, ValueError, LoaderError):  # no files, unreadable, or not a case table
        return rule_table()


def upcase(text: str) -> str:
    """``text`` upcased unit by unit as RtlUpcaseUnicodeString does (characters outside the
    BMP are surrogate pairs to Windows, and surrogates upcase to themselves)."""
    table = upcase_table()
    return "".join(chr(table[o]) if (o := ord(c)) < UNITS else c for c in text)


def names_equal(a: str, b: str) -> bool:
    """Windows' case-insensitive name comparison (RtlEqualUnicodeString(.., TRUE))."""
    return len(a) == len(b) and upcase(a) == upcase(b)


def name_key(text: str) -> str:
    """A dictionary key for ``text`` under Windows' case-insensitive comparison: upcased,
    then ASCII letters lowered for readability (an upcased name holds no a-z, and nothing
    outside ASCII upcases into it, so two names get one key exactly when Windows calls them
    equal)."""
    return upcase(text).translate(_ASCII_LOWER)


_ASCII_LOWER = {c: c + 32 for c in range(ord("A"), ord("Z") + 1)}
