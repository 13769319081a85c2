"""S1's control without ZeRO: where save_pretrained then from_pretrained loses keys on the baseline too, the
loss is save_pretrained's own, not ZeRO-3's (S1 leaves that reload uncompared, saying why)."""

from types import SimpleNamespace

from zero3_conformance.checks.saving import _keys_lost_without_zero


class _Baseline:
    def __init__(self, writes=True):
        self.writes = writes

    def save_pretrained(self, directory):
        if not self.writes:
            raise OSError("disk full")
        directory.mkdir()


def _case(missing):
    class Model:
        @staticmethod
        def from_pretrained(path, **options):
            assert options["output_loading_info"]
            return object(), {"missing_keys": missing}

    return SimpleNamespace(model_class=lambda: Model)


def test_a_round_trip_that_loses_keys_without_zero_names_them(tmp_path):
    assert _keys_lost_without_zero(_case(["lm_head.weight", "embed.weight"]), _Baseline(), tmp_path / "a") == [
        "embed.weight", "lm_head.weight"]


def test_a_round_trip_that_holds_without_zero_blames_nothing_on_it(tmp_path):
    assert _keys_lost_without_zero(_case([]), _Baseline(), tmp_path / "b") == []


def test_a_round_trip_that_raises_without_zero_says_so(tmp_path):
    assert _keys_lost_without_zero(_case([]), _Baseline(writes=False), tmp_path / "c") == [
        "(the round trip raised OSError: disk full)"]
