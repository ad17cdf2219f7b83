"""Bank files: the format, YAML 1.2 rules, and every error naming file, line, filter, field."""

import re
import textwrap

import numpy as np
import pytest

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
     ["b.yaml:2: not valid YAML: while constructing a mapping found duplicate key \"name\" with value \"y\" (original value: \"x\")"]),
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
     ["b.yaml:4: filter 'k': field 'weights': must be a KH x KW matrix or a C x KH x KW list of matrices"]),
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
     ["b.yaml:4: filter 'k': field 'generator.sigma': must be between 0.01 and 10000, got -1"]),
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
    ("name: [unclosed\n", ["b.yaml:2: not valid YAML: while parsing a flow sequence expected ',' or ']', but got '<stream end>'"]),
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
