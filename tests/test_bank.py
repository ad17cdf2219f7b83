"""Bank files: the format, YAML 1.2 rules, and every error naming file, line, filter, field."""

import re
import textwrap
import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from convcli import bank
from convcli.errors import BankError, UsageError


def parse(text: str, source: str = "b.yaml"):
    return bank.parse(textwrap.dedent(text), source=source)


def problems(text: str) -> list[str]:
    with pytest.raises(BankError) as info:
        parse(text)
    return [str(p) for p in info.value.problems]


def test_builtin_banks_load_and_cite_their_sources():
    assert {"edge", "blur"} <= set(bank.builtin_names())
    for name in bank.builtin_names():
        b = bank.load(name)
        assert b.filters, name
        for f in b.filters:
            assert f.source, f"{name}/{f.name} does not cite where its numbers come from"
            assert f.weights.dtype == np.float32 and not f.weights.flags.writeable


def test_edge_bank_derivatives_sum_to_zero_and_blurs_to_one():
    for f in bank.load("edge").filters:
        assert abs(float(f.weights.sum())) < 1e-5, f.name
    for f in bank.load("blur").filters:
        assert float(f.weights.sum()) == pytest.approx(1.0, abs=1e-5), f.name


def test_minimal_bank_and_defaults():
    b = parse("""
        name: mine
        filters:
          - name: k
            weights: [[1, 2, 3], [4, 5, 6]]
    """)
    f = b.filters[0]
    assert b.input == "gray" and f.weights.shape == (1, 2, 3)
    assert f.geometry == bank.Geometry((1, 1), "same", (1, 1), "zero", "relu")
    assert f.scale == "auto" and f.bias == 0.0


def test_defaults_and_per_filter_overrides():
    b = parse("""
        convcli: 1
        name: mine
        defaults: {stride: [2, 1], padding: valid, border: wrap, dilation: 2,
                   activation: abs, input: gray, scale: symmetric}
        filters:
          - name: a
            weights: [[1]]
          - name: b
            weights: [[1, 0], [0, 1]]
            stride: 3
            padding: [1, 2, 3, 4]
            scale: clip
            bias: -0.5
            divisor: 4
    """)
    a, b2 = b.filters
    assert a.geometry == bank.Geometry((2, 1), "valid", (2, 2), "wrap", "abs")
    assert b2.geometry.stride == (3, 3) and b2.geometry.padding == (1, 2, 3, 4)
    assert b2.scale == "clip" and b2.bias == -0.5
    np.testing.assert_array_equal(b2.weights[0], [[0.25, 0], [0, 0.25]])


def test_yaml_1_2_numbers_and_strings():
    b = parse("""
        name: y12
        filters:
          - name: tiny
            weights: [[1e-3, .5, -2E+1]]
    """)
    np.testing.assert_allclose(b.filters[0].weights[0], [[1e-3, 0.5, -20]])
    # YAML 1.1 would read `no` as false; in 1.2 it is a string, so it is not a number.
    assert problems("""
        name: y
        filters:
          - name: k
            weights: [[1]]
            bias: no
    """) == ["b.yaml:6: filter 'k': field 'bias': must be a finite number within float32's "
             "range (about ±3.4e+38), got 'no'"]


def test_multichannel_and_odd_shapes():
    b = parse("""
        name: rgbbank
        defaults: {input: rgb}
        filters:
          - name: red_minus_blue
            weights:
              - [[1, 1]]
              - [[0, 0]]
              - [[-1, -1]]
    """)
    assert b.input == "rgb" and b.filters[0].weights.shape == (3, 1, 2)


@pytest.mark.parametrize("text, expected", [
    ("name: x\nname: y\nfilters: []\n",
     ["b.yaml:2: not valid YAML: while constructing a mapping found duplicate key \"name\" "
      "with value \"y\" (original value: \"x\")"]),
    ("name: x\nfilters:\n  - name: k\n    weights: [[1, 2], [3]]\n",
     ["b.yaml:4: filter 'k': field 'weights': ragged: row 2 has shape 1, row 1 has 2 (line 4)"]),
    ("name: x\nfilters:\n  - name: k\n    weights:\n      - [1, 2]\n      - [3, a]\n",
     ["b.yaml:6: filter 'k': field 'weights': must hold numbers only, found 'a'"]),
    ("name: x\nfilters:\n  - name: k\n    weights: [[1, true]]\n",
     ["b.yaml:4: filter 'k': field 'weights': must hold numbers only, found True"]),
    ("name: x\nfilters:\n  - name: k\n    weights: [[1, .nan]]\n",
     ["b.yaml:4: filter 'k': field 'weights': must be finite numbers within float32's range "
      "(about ±3.4e+38; no .nan or .inf), found nan"]),
    ("name: x\nfilters:\n  - name: k\n    weights: [1, 2]\n",
     ["b.yaml:4: filter 'k': field 'weights': must be a KH x KW matrix or a C x KH x KW list "
      "of matrices"]),
    ("name: x\nfilters:\n  - name: k\n    weights: [[1]]\n    generator: {type: box}\n",
     ["b.yaml:3: filter 'k': field 'weights': give exactly one of 'weights' or 'generator'"]),
    ("name: x\nfilters:\n  - name: k\n    wieghts: [[1]]\n",
     ["b.yaml:4: filter 'k': field 'wieghts': unknown key (did you mean 'weights'?); allowed: "
      "name, description, source, weights, generator, bias, divisor, scale, stride, padding, "
      "dilation, border, activation",
      "b.yaml:3: filter 'k': field 'weights': give exactly one of 'weights' or 'generator'"]),
    ("name: x\nfilters:\n  - name: k\n    generator: {type: gausian, sigma: 1}\n",
     ["b.yaml:4: filter 'k': field 'generator.type': unknown generator 'gausian' (did you mean "
      "'gaussian'?); known: identity, box, gaussian, disk, motion, log, dog, gabor, sobel, "
      "scharr, prewitt, roberts, laplacian, kirsch"]),
    ("name: x\nfilters:\n  - name: k\n    generator: {type: gaussian, sigma: -1}\n",
     ["b.yaml:4: filter 'k': field 'generator.sigma': must be > 0, got -1"]),
    ("name: x\nfilters:\n  - name: k\n    generator: {type: gaussian, sigam: 1}\n",
     ["b.yaml:4: filter 'k': field 'generator.sigam': unknown parameter for gaussian (did you "
      "mean 'sigma'?); accepted: sigma, size, truncate"]),
    ("name: x\nfilters:\n  - name: k\n    weights: [[1]]\n    stride: 0\n",
     ["b.yaml:5: filter 'k': field 'stride': stride must be a whole number >= 1 or a pair "
      "[y, x], got 0"]),
    ("name: x\nfilters:\n  - name: k\n    weights: [[1]]\n    border: mirror\n",
     ["b.yaml:5: filter 'k': field 'border': border must be one of zero, reflect, replicate, "
      "wrap; got 'mirror'"]),
    ("name: x\nfilters:\n  - name: k\n    weights: [[1]]\n    divisor: 0\n",
     ["b.yaml:5: filter 'k': field 'divisor': must not be zero"]),
    ("name: x\nfilters:\n  - name: k\n    weights: [[[1]], [[2]]]\n",
     ["b.yaml:4: filter 'k': field 'weights': has 2 channels but the bank's input mode 'gray' "
      "needs 2-D (KH x KW) weights"]),
    ("name: x\ndefaults: {input: rgb}\nfilters:\n  - name: k\n    weights: [[1]]\n",
     ["b.yaml:5: filter 'k': field 'weights': has 1 channels but the bank's input mode 'rgb' "
      "needs 3 x KH x KW weights"]),
    ("name: x\nfilters:\n  - name: k\n    weights: [[1]]\n  - name: k\n    weights: [[2]]\n",
     ["b.yaml:5: filter 'k': field 'name': duplicate filter name (first used on line 3)"]),
    ("filters:\n  - weights: [[1]]\n",
     ["b.yaml:1: field 'name': missing (a non-empty string)",
      "b.yaml:2: filter '#1': field 'name': missing (a non-empty string)"]),
    ("name: x\nfilters: []\n", ["b.yaml:2: field 'filters': must be a non-empty list of filters"]),
    ("convcli: 2\nname: x\nfilters:\n  - {name: k, weights: [[1]]}\n",
     ["b.yaml:1: field 'convcli': unsupported format version 2; this convcli reads version 1"]),
    ("- just\n- a list\n", ["b.yaml:1: a bank must be a mapping with 'name' and 'filters'"]),
    ("name: [unclosed\n", ["b.yaml:2: not valid YAML: while parsing a flow sequence expected "
                           "',' or ']', but got '<stream end>'"]),
])
def test_bad_banks(text, expected):
    assert problems(text) == expected


def test_all_problems_are_reported_at_once():
    found = problems("""
        name: many
        defaults: {padding: full}
        filters:
          - name: a
            weights: [[1, x]]
          - name: b
            generator: {type: box, size: 0}
          - name: c
            weights: [[1]]
            activation: gelu
    """)
    assert [p.split(":")[1] for p in found] == ["3", "6", "8", "11"]
    assert "filter 'a'" in found[1] and "filter 'b'" in found[2] and "filter 'c'" in found[3]


def test_python_tags_are_refused_and_never_run(tmp_path):
    marker = tmp_path / "pwned"
    found = problems(f"""
        name: evil
        description: !!python/object/apply:os.system ["touch {marker}"]
        filters:
          - name: k
            weights: [[1]]
    """)
    assert not marker.exists()
    assert found[0] == ("b.yaml:3: tag tag:yaml.org,2002:python/object/apply:os.system is not "
                        "allowed in a bank")
    assert found[1].startswith("b.yaml:3: field 'description': must be a non-empty string")


def _laughs(levels: int) -> list[str]:
    """The "billion laughs" shape: each anchor repeats the previous one ten times."""
    lines = ["  a0: &a0 [1, 1, 1, 1, 1, 1, 1, 1, 1, 1]"]
    for i in range(1, levels + 1):
        lines.append(f"  a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]")
    return lines


def test_alias_bomb_is_refused_without_expanding_it():
    text = "\n".join(["name: bomb", "provenance:"] + _laughs(9)
                     + ["filters:", "  - name: k", "    weights: *a1"])
    (found,) = problems(text)
    expanded = int(re.search(r"expands to ([\d,]+) values", found).group(1).replace(",", ""))
    assert expanded > 10**10  # a9 alone stands for ten billion ones
    assert found.endswith("values through aliases; at most 8,388,608 are allowed")


def test_small_aliases_are_fine_and_shapes_still_checked():
    text = "\n".join(["name: ok", "provenance:"] + _laughs(2)
                     + ["filters:", "  - name: k", "    weights: *a2"])
    assert problems(text) == ["b.yaml:8: filter 'k': field 'weights': has 10 channels but the "
                              "bank's input mode 'gray' needs 2-D (KH x KW) weights"]


def test_huge_kernels_are_refused_before_reading_them():
    rows = "[" + ", ".join(["0"] * 1100) + "]"
    found = problems(f"name: big\nfilters:\n  - name: k\n    weights: [{rows}]\n")
    assert found == ["b.yaml:4: filter 'k': field 'weights': has 1100 entries along one axis; "
                     "at most 1025 are allowed"]


def test_select_and_override():
    b = bank.load("edge").select(["sobel_y", "sobel_x"])
    assert [f.name for f in b.filters] == ["sobel_y", "sobel_x"]
    o = b.override(stride=(2, 2), border=None, scale="symmetric")
    assert all(f.geometry.stride == (2, 2) and f.scale == "symmetric" for f in o.filters)
    assert o.filters[0].geometry.border == b.filters[0].geometry.border
    with pytest.raises(UsageError, match=r"bank 'edge' has no filter 'kirsch_nn' \(did you "
                       r"mean 'kirsch_n'\?\); see 'convcli bank show edge'"):
        bank.load("edge").select(["kirsch_nn"])


@pytest.mark.parametrize("key, text, value", [
    ("stride", "2", (2, 2)), ("stride", "2,1", (2, 1)), ("padding", "same", "same"),
    ("padding", "1,2", (1, 1, 2, 2)), ("padding", "0,1,2,3", (0, 1, 2, 3)),
    ("dilation", "3", (3, 3)), ("border", "wrap", "wrap"), ("activation", "abs", "abs"),
    ("scale", "global", "global"),
])
def test_cli_settings(key, text, value):
    assert bank.parse_cli_setting(key, text) == value


def test_bad_cli_setting_is_a_usage_error():
    with pytest.raises(UsageError, match=r"--padding: padding must be same, valid"):
        bank.parse_cli_setting("padding", "full")


def test_unknown_builtin_bank_suggests():
    with pytest.raises(UsageError, match=r"no built-in bank 'egde' \(did you mean 'edge'\?\)"):
        bank.resolve("egde")


def test_file_errors_name_the_file(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("name: x\nfilters:\n  - name: k\n    weights: [[1, 2], [3]]\n")
    with pytest.raises(BankError, match=f"^{p}:4: filter 'k'"):
        bank.load(str(p))
    with pytest.raises(UsageError, match="bank file nothere.yaml not found"):
        bank.load("nothere.yaml")


# --- hostile banks: bounded cost, float32 range, absurd settings ---------------------------

def one_filter(extra: str = "", weights: str = "[[1]]") -> str:
    return f"name: x\nfilters:\n  - name: k\n    weights: {weights}\n{extra}"


def test_files_over_the_size_limits_are_refused_before_the_yaml_is_read():
    n = bank.MAX_BANK_ITEMS
    many = one_filter(weights="[[" + ",".join(["a"] * n) + "]]")
    assert problems(many) == [f"b.yaml: has about {n + 6:,} list entries and keys; a bank file "
                              f"may have at most {n:,} (counted before reading the YAML)"]
    lines = one_filter() + "\n" * bank.MAX_BANK_LINES
    assert problems(lines) == [f"b.yaml: has {bank.MAX_BANK_LINES + 4:,} lines; a bank file may "
                               f"have at most {bank.MAX_BANK_LINES:,}"]
    assert problems(one_filter() + "#" * bank.MAX_BANK_BYTES) == [
        "b.yaml: is larger than 2 MiB, the most a bank file may be"]


def test_a_huge_file_is_not_read_whole(tmp_path):
    big = tmp_path / "big.yaml"
    with open(big, "wb") as fh:  # sparse: 64 GiB on paper, nothing on disk
        fh.write(one_filter().encode())
        fh.truncate(64 << 30)
    with pytest.raises(BankError) as info:
        bank.load(str(big))
    assert str(info.value) == f"{big}: is larger than 2 MiB, the most a bank file may be"


def test_unreadable_bank_files_name_the_reason(tmp_path):
    latin = tmp_path / "latin.yaml"
    latin.write_bytes(b"name: caf\xe9\nfilters: []\n")
    with pytest.raises(BankError, match=rf"^{re.escape(str(latin))}: cannot read: not UTF-8 text "
                                        r"\(byte 0xe9 at offset 9\)$"):
        bank.load(str(latin))
    (tmp_path / "dir.yaml").mkdir()
    with pytest.raises(UsageError, match=r"dir.yaml is not a regular file$"):
        bank.load(str(tmp_path / "dir.yaml"))


@pytest.mark.parametrize("extra, weights, expected", [
    ("", "[[1e39]]", "4: filter 'k': field 'weights': must be finite numbers within float32's "
                     "range (about ±3.4e+38; no .nan or .inf), found 1e+39"),
    ("", "[[1, 2], [3, -3.5e38]]", "4: filter 'k': field 'weights': must be finite numbers "
                                   "within float32's range (about ±3.4e+38; no .nan or .inf), "
                                   "found -3.5e+38"),
    ("", "[[" + "9" * 400 + "]]", "4: filter 'k': field 'weights': must be finite numbers within "
                                  "float32's range (about ±3.4e+38; no .nan or .inf), found "
                                  "9999999999999999999999999999...99999999999999999999999999999"),
    ("", "[[1.0e+400]]", "4: filter 'k': field 'weights': must be finite numbers within "
                         "float32's range (about ±3.4e+38; no .nan or .inf), found inf"),
    ("    bias: 1e39\n", "[[1]]", "5: filter 'k': field 'bias': must be a finite number within "
                                  "float32's range (about ±3.4e+38), got 1e+39"),
    ("    bias: " + "9" * 400 + "\n", "[[1]]",
     "5: filter 'k': field 'bias': must be a finite number within float32's range (about "
     "±3.4e+38), got 9999999999999999999999999999...99999999999999999999999999999"),
    ("    divisor: 1e-30\n", "[[1e30]]", "5: filter 'k': field 'divisor': weights / divisor "
                                         "leave float32's range (about ±3.4e+38)"),
    ("    divisor: 1e38\n", "[[1e-10, 2e-10]]", "5: filter 'k': field 'divisor': weights / "
                                                 "divisor are "
                                         "all too small for float32 (under about 1.4e-45) and "
                                         "would all be zero"),
    ("", "[[1e-50, -1e-60]]", "4: filter 'k': field 'weights': the weights are all too small "
                              "for float32 (under about 1.4e-45) and would all be zero"),
    ("    divisor: .inf\n", "[[1]]", "5: filter 'k': field 'divisor': must be a finite number "
                                     "within float32's range (about ±3.4e+38), got inf"),
])
def test_numbers_outside_float32_are_refused_where_they_are(extra, weights, expected):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no NumPy RuntimeWarning may escape
        assert problems(one_filter(extra, weights)) == [f"b.yaml:{expected}"]


def test_generated_kernels_are_checked_too():
    found = problems("""
        name: g
        filters:
          - name: tiny
            generator: {type: log, sigma: 1e-300}
          - name: flat
            generator: {type: gabor, size: 1}
          - name: word
            generator: {type: gaussian, sigma: '2'}
          - name: bool
            generator: {type: box, size: true}
          - name: endless
            generator: {type: gaussian, truncate: .inf}
    """)
    assert found == [
        "b.yaml:5: filter 'tiny': field 'generator.sigma': must be at least 0.01, got 1e-300",
        "b.yaml:7: filter 'flat': field 'generator': these gabor parameters give a kernel of "
        "all zeros (every map would be zero)",
        "b.yaml:9: filter 'word': field 'generator.sigma': must be a number, got '2'",
        "b.yaml:11: filter 'bool': field 'generator.size': must be a number, got True",
        "b.yaml:13: filter 'endless': field 'generator.truncate': must be a finite number, "
        "got inf",
    ]


@pytest.mark.parametrize("extra, expected", [
    ("stride: 9223372036854775808", "field 'stride': stride must be at most 1024, got "
                                    "9223372036854775808"),
    ("stride: [1, 1025]", "field 'stride': stride must be at most 1024, got [1, 1025]"),
    ("dilation: 1000000000000000000", "field 'dilation': dilation must be at most 1024, got "
                                      "1000000000000000000"),
    ("dilation: -2", "field 'dilation': dilation must be a whole number >= 1 or a pair [y, x], "
                     "got -2"),
    ("stride: true", "field 'stride': stride must be a whole number >= 1 or a pair [y, x], "
                     "got True"),
    ("stride: [1, 2, 3]", "field 'stride': stride must be a whole number >= 1 or a pair [y, x], "
                          "got [1, 2, 3]"),
    ("padding: 4097", "field 'padding': padding must be at most 4096 pixels on each side, "
                      "got 4097"),
    ("padding: [0, 0, 0, 18446744073709551616]", "field 'padding': padding must be at most "
                                                 "4096 pixels on each side, got [0, 0, 0, "
                                                 "18446744073709551616]"),
    ("padding: -1", "field 'padding': padding must be same, valid, a whole number >= 0, a pair "
                    "[y, x] or [top, bottom, left, right], got -1"),
])
def test_absurd_settings_name_the_setting(extra, expected):
    assert problems(one_filter(f"    {extra}\n")) == [f"b.yaml:5: filter 'k': {expected}"]


def test_dilation_may_not_spread_a_kernel_beyond_the_footprint_limit():
    nine = "[" + ", ".join(["[" + ", ".join(["1"] * 9) + "]"] * 9) + "]"
    ok = parse(one_filter("    dilation: 512\n", nine))  # (9 - 1) * 512 + 1 = 4097
    assert ok.filters[0].geometry.dilation == (512, 512)
    assert problems(one_filter("    dilation: [1, 513]\n", nine)) == [
        "b.yaml:5: filter 'k': field 'dilation': dilation 1,513 spreads the 9x9 kernel over "
        "9x4105 pixels; at most 4097 along each axis are allowed"]
    with pytest.raises(UsageError, match=r"^filter 'k': dilation 1024,1024 spreads the 9x9 "
                                         r"kernel over 8193x8193 pixels; at most 4097"):
        ok.override(dilation=(1024, 1024))


@pytest.mark.parametrize("key, text, message", [
    ("stride", "99999999999999999999", "--stride: stride must be at most 1024, got "
                                       "99999999999999999999"),
    ("stride", "1" * 4000, "--stride: stride must be at most 1024, got "
                           "1111111111111111111111111111...11111111111111111111111111111"),
    ("stride", "1" * 4001, "--stride: stride must be a whole number >= 1 or a pair [y, x], "
                           "got '111111111111111111111111111...1111111111111111111111111111'"),
    ("dilation", "\u0663", "--dilation: dilation must be a whole number >= 1 or a pair [y, x], "
                           "got '\u0663'"),
    ("padding", "1,2,3,5000", "--padding: padding must be at most 4096 pixels on each side, "
                              "got [1, 2, 3, 5000]"),
    ("padding", "", "--padding: padding must be same, valid, a whole number >= 0, a pair [y, x] "
                    "or [top, bottom, left, right], got ''"),
])
def test_absurd_command_line_settings(key, text, message):
    with pytest.raises(UsageError) as info:
        bank.parse_cli_setting(key, text)
    assert str(info.value) == message


def test_names_and_descriptions_are_bounded():
    long = "n" * 10_000
    found = problems(f"""
        name: x
        filters:
          - name: {long}
            weights: [[1]]
          - name: ok
            description: {"d" * 5000}
            weights: [[1]]
    """)
    assert found == [
        f"b.yaml:4: filter '{'n' * 57}...': field 'name': is 10,000 characters long; at most "
        "200 are allowed",
        "b.yaml:7: filter 'ok': field 'description': is 5,000 characters long; at most 4,096 "
        "are allowed"]
    assert parse(f"name: x\nfilters:\n  - {{name: {'n' * 200}, weights: [[1]]}}\n").filters


def test_aliases_repeating_one_big_kernel_are_read_once():
    # Seven filters of 1025 x 1025 built from one row: 7.4 million values once expanded,
    # under MAX_NODES; each distinct list is converted once, so this takes a fraction of a
    # second rather than one Python step per value.
    row = "&r [" + ", ".join(["0.5"] * 1025) + "]"
    rows = "&m [" + row + ", *r" * 1024 + "]"
    text = "name: x\nfilters:\n  - name: f0\n    weights: " + rows + "\n" + "".join(
        f"  - name: f{i}\n    weights: *m\n" for i in range(1, 7))
    b = bank.parse(text, source="b.yaml")
    assert len(b.filters) == 7
    assert all(f.weights.shape == (1, 1025, 1025) and (f.weights == 0.5).all() for f in b.filters)


def test_provenance_may_not_expand_to_much():
    text = "\n".join(["name: p", "provenance:"] + _laughs(5)
                     + ["filters:", "  - {name: k, weights: [[1]]}"])
    assert problems(text) == ["b.yaml:2: field 'provenance': holds 1,234,567 values once aliases "
                              "are expanded; at most 65,536 are allowed"]


# --- dense layers, groups, the channel limit, more activations ------------------------------

def test_dense_banks_take_any_number_of_channels_the_same_for_every_filter():
    b = parse("""
        name: deep
        defaults: {input: dense, groups: 2}
        filters:
          - {name: a, weights: [[[1]], [[2]], [[3]]]}
          - {name: b, weights: [[[4]], [[5]], [[6]]]}
    """)
    assert b.input == "dense" and b.groups == 2 and b.channels == 6
    assert [f.group for f in b.filters] == [0, 1]
    wide = parse("name: w\ndefaults: {input: dense}\nfilters:\n  - name: k\n    weights: "
                 + str([[[0.5]]] * 4096) + "\n")
    assert wide.filters[0].weights.shape == (4096, 1, 1) and wide.channels == 4096


@pytest.mark.parametrize("text, expected", [
    ("name: x\ndefaults: {input: dense}\nfilters:\n  - {name: k, weights: "
     + str([[[1]]] * 4097) + "}\n",
     "b.yaml:4: filter 'k': field 'weights': has 4097 entries along one axis; at most 4096 are "
     "allowed"),
    ("name: x\ndefaults: {input: dense}\nfilters:\n  - {name: k, weights: "
     + str([[[1] * 2] * 1026]) + "}\n",
     "b.yaml:4: filter 'k': field 'weights': has 1026 entries along one axis; at most 1025 are "
     "allowed"),
    ("name: x\ndefaults: {input: rgb, groups: 3}\nfilters:\n  - {name: k, weights: [[[1]], "
     "[[1]], [[1]]]}\n",
     "b.yaml:2: field 'defaults.groups': groups apply to input 'dense' only, not 'rgb'"),
    ("name: x\ndefaults: {input: dense, groups: 5000}\nfilters:\n  - {name: k, weights: [[1]]}\n",
     "b.yaml:2: field 'defaults.groups': groups must be at most 4096, got 5000"),
    ("name: x\ndefaults: {input: dense, groups: [2]}\nfilters:\n  - {name: k, weights: [[1]]}\n",
     "b.yaml:2: field 'defaults.groups': groups must be a whole number >= 1, got [2]"),
    ("name: x\ndefaults: {input: dense}\nfilters:\n  - {name: a, weights: [[1]]}\n"
     "  - {name: b, weights: [[[1]], [[2]]]}\n",
     "b.yaml:5: filter 'b': field 'weights': has 2 channels but filter 'a' has 1; every filter "
     "of a dense layer spans the same input channels"),
    ("name: x\nfilters:\n  - {name: k, weights: [[1]], activation: gelu}\n",
     "b.yaml:3: filter 'k': field 'activation': activation must be one of relu, none, abs, "
     "relu6, leaky_relu, hardswish, hardsigmoid, sigmoid, tanh, silu, elu, selu, softplus, "
     "mish; got 'gelu' (did you mean 'elu'?)"),
])
def test_bad_dense_and_grouped_banks(text, expected):
    assert problems(text) == [expected]


def test_a_layer_may_hold_only_so_many_weights(monkeypatch):
    monkeypatch.setattr(bank, "MAX_LAYER_WEIGHTS", 10)
    two = "name: x\nfilters:\n  - {name: a, weights: [[1, 2], [3, 4]]}\n  - {name: b, weights: "
    assert len(parse(two + "[[1, 2, 3], [4, 5, 6]]}\n").filters) == 2  # 10: at the limit
    assert problems(two + "[[1, 2, 3], [4, 5, 6], [7, 8, 9]]}\n") == [
        "b.yaml:2: field 'filters': the filters hold 13 weights in all; a layer may hold at "
        "most 10"]


def test_activations_beyond_the_engines_own_are_settings_too():
    b = parse("name: x\ndefaults: {activation: hardswish}\nfilters:\n  - {name: k, weights: "
              "[[1]], activation: sigmoid}\n  - {name: j, weights: [[1]]}\n")
    assert [f.geometry.activation for f in b.filters] == ["sigmoid", "hardswish"]
    assert bank.parse_cli_setting("activation", "leaky_relu") == "leaky_relu"


# --- whole matrices read without the YAML reader change nothing ------------------------------

NUMBERS = st.one_of(st.sampled_from(["0", "-0", "+1", "1.", ".5", "1e3", "-2E+1", "017",
                                     "1e39", "1" * 450, ".inf", "x", "1_0"]),
                    st.integers(-1000, 1000).map(str),
                    st.floats(-1e3, 1e3, allow_nan=False).map(repr))


@st.composite
def nested(draw, depth):
    """A flow list of numbers ``depth`` deep, sometimes ragged or odd."""
    if depth == 0:
        return draw(NUMBERS)
    n = draw(st.integers(1, 3))
    items = [draw(nested(depth - 1)) for _ in range(n)]
    sep = draw(st.sampled_from([", ", ",", " , "]))
    return "[" + sep.join(items) + "]"


MATRIX_PLACES = st.sampled_from([
    "weights: {m}", "weights: [{m}, {m}]", "weights: &a {m}\n  - name: g\n    weights: *a",
    "weights: {m}\n    description: '{m}'", "weights: {m}  # {m}", "weights: !!seq {m}",
    "weights: {m}x", "weights: [{m}\n      ]", "{{weights: {m}}}", "weights:\n      - {m}",
    "weights: {m}\n    bias: {m}", "weights: {m}\n    description: |-\n      {m}",
])


@settings(max_examples=150, deadline=None)
@given(MATRIX_PLACES, st.integers(1, 4).flatmap(nested), st.sampled_from(["gray", "dense"]))
def test_fast_matrices_read_exactly_as_the_yaml_reader_does(place, matrix, mode):
    text = (f"name: n\ndefaults: {{input: {mode}}}\nfilters:\n  - name: f\n    "
            + place.replace("{m}", matrix).replace("{{", "{").replace("}}", "}") + "\n")
    outcomes = []
    for fast in (True, False):
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            try:
                b = bank.parse(text, source="b.yaml", fast_rows=fast)
            except BankError as e:
                outcomes.append([str(p) for p in e.problems])
            else:
                outcomes.append([(f.name, f.weights.tolist(), f.bias, f.description)
                                 for f in b.filters])
    assert outcomes[0] == outcomes[1], text


def test_the_option_vocabularies_have_one_owner_each():
    from convcli import activation, engine, ops

    assert set(bank.FUSED_ACTIVATIONS) == set(activation.CODES)
    assert set(bank.ACTIVATIONS) <= set(ops.FUNCTIONS)
    assert bank.BORDERS == tuple(engine.BORDER_MODES)
