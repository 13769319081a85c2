"""Stand-ins for helpers older releases lack: each supplies the behaviour the check needs, or says why the
release cannot be checked that way."""

import types

from zero3_conformance import compat


def test_text_config_is_the_config_itself_where_the_release_has_no_get_text_config():
    text = types.SimpleNamespace(vocab_size=7)
    composite = types.SimpleNamespace(get_text_config=lambda: text)
    plain = types.SimpleNamespace(vocab_size=5)  # transformers before 4.45
    assert compat.text_config(composite) is text
    assert compat.text_config(plain) is plain


def test_a_refused_torch_load_is_reported_with_transformers_own_first_line(monkeypatch):
    import transformers.utils.import_utils as import_utils

    def refuse():
        raise ValueError("Due to a serious vulnerability issue in `torch.load`, we require torch >= 2.6.\nSee ...")

    monkeypatch.setattr(import_utils, "check_torch_load_is_safe", refuse, raising=False)
    assert compat.torch_load_refusal() == ("Due to a serious vulnerability issue in `torch.load`, we require "
                                           "torch >= 2.6.")
    monkeypatch.setattr(import_utils, "check_torch_load_is_safe", lambda: None, raising=False)
    assert compat.torch_load_refusal() is None
    monkeypatch.delattr(import_utils, "check_torch_load_is_safe", raising=False)  # releases before it
    assert compat.torch_load_refusal() is None
