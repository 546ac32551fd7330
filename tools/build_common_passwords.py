"""Rebuild `common-passwords.txt`, the offline breached-password list (not used at run time).

Usage (from the repository root; both wheels come from PyPI with `pip download --no-deps`):

    pip download --no-deps -d /tmp/pw django==5.2.17 zxcvbn==4.5.0
    python tools/build_common_passwords.py /tmp/pw/django-*.whl /tmp/pw/zxcvbn-*.whl

Sources, read straight out of the wheels (nothing is imported from them):

* Django 5.2.17, `django/contrib/auth/common-passwords.txt.gz` (BSD-3-Clause): the 20,000
  most common passwords of breach corpora, compiled by Royce Williams, in frequency order.
* zxcvbn 4.5.0, `zxcvbn/frequency_lists.py` (MIT), list `passwords`: the 30,000 most
  common passwords of the Xato 10-million-password corpus, in frequency order.

Their licences are in `NOTICE.md` beside this file.

Only entries of 12 to 128 code points can ever decide a check (shorter ones fail the length
rule first), so the list holds, lowercased and NFKC-normalised:

1. every entry of either source of that length, verbatim;
2. the most common shorter entries ("bases", frequency order) with the suffixes people add
   to pass a length rule (digit runs, years, "!", "@123", ...) and doubled ("qwertyqwerty");
3. keyboard walks and digit runs of 12 to 32 characters ("qwertyuiopasdf", "111111111111").

The output is deterministic: sorted, one entry a line, UTF-8, no comments.
"""

from __future__ import annotations

import ast
import gzip
import io
import sys
import unicodedata
import zipfile
from pathlib import Path

MIN, MAX = 12, 128
BASES = 1000
"""How many of the most common short entries get suffixes."""

SUFFIXES = (
    [
        "1", "12", "123", "1234", "12345", "123456", "1234567", "12345678", "123456789", "1234567890",
        "0", "00", "01", "007", "11", "13", "21", "22", "23", "69", "77", "88", "99", "100", "101",
        "111", "1111", "123123", "321", "4321", "54321", "654321", "666", "777", "987", "000",
        "!", "!!", "!!!", "?", ".", "@", "#", "*", "1!", "12!", "123!", "1234!", "12345!",
        "!1", "!12", "!123", "@1", "@12", "@123", "@1234", "#1", "#123", "$", "123$", "1@", "123@",
        "qwerty", "abc", "abc123", "123abc", "xyz",
    ]
    + [str(year) for year in range(1970, 2031)]
)

WALKS = (
    "qwertyuiopasdfghjklzxcvbnm",
    "qwertyuiop[]asdfghjkl;'zxcvbnm,./",
    "azertyuiopqsdfghjklmwxcvbn",
    "qwertzuiopasdfghjklyxcvbnm",
    "1234567890qwertyuiopasdfghjklzxcvbnm",
    "1234567890-=qwertyuiop",
    "1q2w3e4r5t6y7u8i9o0p",
    "q1w2e3r4t5y6u7i8o9p0",
    "1qaz2wsx3edc4rfv5tgb6yhn7ujm8ik9ol0p",
    "zaq12wsxcde34rfvbgt56yhnmju78ik,.lo90p;/-",
    "zaq1xsw2cde3vfr4bgt5nhy6mju7",
    "qazwsxedcrfvtgbyhnujmikolp",
    "qweasdzxcrtyfghvbnuiojklm",
    "123qweasdzxc456rtyfghvbn",
    "1qazxsw23edcvfr45tgbnhy6",
    "asdfghjklqwertyuiopzxcvbnm",
    "zxcvbnmasdfghjklqwertyuiop",
    "poiuytrewqlkjhgfdsamnbvcxz",
    "mnbvcxzlkjhgfdsapoiuytrewq",
    "abcdefghijklmnopqrstuvwxyz",
    "zyxwvutsrqponmlkjihgfedcba",
    "12345678901234567890123456789012",
    "09876543210987654321098765432109",
    "98765432109876543210",
    "12312312312312312312312312312312",
    "12341234123412341234123412341234",
    "12121212121212121212121212121212",
    "11223344556677889900",
    "11112222333344445555",
    "147258369147258369",
    "159753159753159753",
    "741852963741852963",
    "!@#$%^&*()_+",
    "1234567890!@#$%^&*()",
    "abc123abc123abc123abc123",
    "a1b2c3d4e5f6g7h8i9j0",
    "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
)


def _clean(entry: str) -> str:
    return unicodedata.normalize("NFKC", entry.strip()).lower()


def django_list(wheel: Path) -> list[str]:
    with zipfile.ZipFile(wheel) as zf:
        raw = zf.read("django/contrib/auth/common-passwords.txt.gz")
    with gzip.open(io.BytesIO(raw), "rt", encoding="utf-8") as f:
        return [line.rstrip("\n") for line in f]


def zxcvbn_list(wheel: Path) -> list[str]:
    with zipfile.ZipFile(wheel) as zf:
        source = zf.read("zxcvbn/frequency_lists.py").decode("utf-8")
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Dict):
            for key, value in zip(node.keys, node.values, strict=True):
                if (
                    isinstance(key, ast.Constant) and key.value == "passwords"
                    and isinstance(value, ast.Call) and isinstance(value.func, ast.Attribute)
                    and isinstance(value.func.value, ast.Constant)
                ):
                    return str(value.func.value.value).split(",")
    raise SystemExit("zxcvbn: list 'passwords' not found")


def build(django: list[str], zxcvbn: list[str]) -> list[str]:
    ranked: list[str] = []
    seen: set[str] = set()
    for pair in zip(django, zxcvbn, strict=False):  # interleave: both are in frequency order
        for entry in map(_clean, pair):
            if entry and entry not in seen:
                seen.add(entry)
                ranked.append(entry)
    for entry in map(_clean, django[len(zxcvbn):] + zxcvbn[len(django):]):
        if entry and entry not in seen:
            seen.add(entry)
            ranked.append(entry)

    out = {entry for entry in ranked if MIN <= len(entry) <= MAX}
    bases = [entry for entry in ranked if 4 <= len(entry) < MIN][:BASES]
    for base in bases:
        out.update(base + suffix for suffix in SUFFIXES)
        out.add(base + base)
        if base.isalpha():
            out.add(base[::-1] + "123")
    for walk in WALKS:
        out.update(walk[:n] for n in range(MIN, min(len(walk), 32) + 1))
    for ch in "0123456789abcxz":
        out.update(ch * n for n in range(MIN, 33))
    return sorted(entry for entry in out if MIN <= len(entry) <= MAX and "\n" not in entry)


def main(argv: list[str]) -> None:
    if len(argv) != 3:
        raise SystemExit(__doc__)
    entries = build(django_list(Path(argv[1])), zxcvbn_list(Path(argv[2])))
    target = Path(__file__).resolve().parent.parent / "shared" / "identity" / "data" / "common-passwords.txt"
    target.write_text("".join(entry + "\n" for entry in entries), encoding="utf-8")
    print(f"{target}: {len(entries)} entries")


if __name__ == "__main__":
    main(sys.argv)
