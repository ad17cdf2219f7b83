"""Coverage-guided fuzzing of the bank loader and the image reader with atheris (libFuzzer).

Not part of the test suite (it runs until stopped). The property is the one
tests/test_fuzz.py checks: any input gives a result or the documented error, nothing else.

    pip install atheris
    python tests/fuzz/atheris_parsers.py bank  -max_total_time=300 [corpus/]
    python tests/fuzz/atheris_parsers.py image -max_total_time=300 [corpus/]
"""

import sys

import atheris

with atheris.instrument_imports():
    from convcli import bank, images
    from convcli.errors import BankError, InputError


def fuzz_bank(data: bytes) -> None:
    text = atheris.FuzzedDataProvider(data).ConsumeUnicodeNoSurrogates(len(data))
    try:
        bank.parse(text, source="fuzz.yaml")
    except BankError:
        pass


def fuzz_image(data: bytes) -> None:
    try:
        images.read_image(data, label="fuzz", max_pixels=4_000_000)
    except InputError:
        pass


if __name__ == "__main__":
    target = {"bank": fuzz_bank, "image": fuzz_image}[sys.argv.pop(1)]
    atheris.Setup(sys.argv, target)
    atheris.Fuzz()
