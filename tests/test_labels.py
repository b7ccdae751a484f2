import pytest

from emotrain.config import ConfigError, from_dict
from emotrain.labels import LabelScheme, load_scheme

ED32 = """afraid angry annoyed anticipating anxious apprehensive ashamed caring confident content devastated
disappointed disgusted embarrassed excited faithful furious grateful guilty hopeful impressed jealous joyful
lonely nostalgic prepared proud sad sentimental surprised terrified trusting""".split()

EKMAN = {
    "happy": "excited proud grateful confident hopeful joyful content caring trusting faithful anticipating prepared",
    "sad": "sad lonely guilty nostalgic embarrassed sentimental ashamed anxious disappointed",
    "fear": "afraid terrified apprehensive",
    "angry": "angry furious annoyed",
    "contempt": "jealous",
    "surprised": "surprised impressed devastated",
    "disgusted": "disgusted",
}


def test_ekman7_maps_all_32_as_specified():
    scheme = load_scheme("ekman7")
    assert scheme.classes == ["happy", "surprised", "angry", "fear", "sad", "disgusted", "contempt"]
    expected = {w: cls for cls, words in EKMAN.items() for w in words.split()}
    assert sorted(expected) == sorted(ED32)
    for word, cls in expected.items():
        assert scheme.classes[scheme.index(word)] == cls, word
    assert scheme.classes[scheme.index("  Frustrated ")] == "angry"


def test_unmapped_word_is_none_never_a_default():
    scheme = load_scheme("ekman7")
    assert scheme.index("bewildered") is None
    assert scheme.index("") is None
    assert scheme.index(None) is None


def test_ed32_is_identity():
    scheme = load_scheme("ed32")
    assert scheme.num_classes == 32
    assert [scheme.index(w) for w in ED32] == list(range(32))
    assert scheme.index("happy") is None


def test_conflicting_words_rejected():
    with pytest.raises(ConfigError, match="maps to both"):
        from_dict(LabelScheme, {"name": "x", "classes": ["a", "b"], "words": {"a": ["w"], "b": ["w"]}})
    with pytest.raises(ConfigError, match="unknown class"):
        from_dict(LabelScheme, {"name": "x", "classes": ["a", "b"], "words": {"c": ["w"]}})
