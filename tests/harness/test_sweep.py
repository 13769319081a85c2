"""The architecture sweep: which classes of a type each clause runs on, inputs for every modality, and a run
over types of different modalities (text, vision, multimodal) that checks them for real."""

import json

import pytest

from zero3_conformance import catalog, cli
from zero3_conformance.catalog import SWEEP_ROLES, build_cases
from zero3_conformance.errors import UsageError
from zero3_conformance.inputs import InputsUnavailable, training_batch


def _cases(types, **kwargs):
    return build_cases(architectures=types, **kwargs)


def test_each_clause_runs_on_the_classes_it_is_about():
    from zero3_conformance.architectures import base_class, head_classes, loss_head

    cases = _cases(["bert"], subjects=["transformers"])
    base, heads, loss = base_class("bert"), head_classes("bert"), loss_head("bert")
    assert base == "BertModel"
    assert loss == "BertLMHeadModel"
    assert len(heads) > 5
    on = {clause: {c.head for c in cases if c.clause == clause} for clause in {c.clause for c in cases}}
    for clause in set(SWEEP_ROLES["base"]) - {"G1"}:
        assert on[clause] == {base}, clause
    assert on["G1"] == set(heads)  # values compared on every class, each from a checkpoint of its own
    assert on["P4"] == on["G7"] == set(heads)  # every class
    assert on["G3"] == set(heads) - {base}  # a base checkpoint loaded into each head
    for clause in SWEEP_ROLES["loss head"]:
        assert on[clause] == {loss}, clause
    # The loss head's numerics and every class's G1 load a checkpoint of the class itself; G3 and G7 a base one.
    assert {c.family.checkpoint_auto_class for c in cases if c.clause == "N1"} == {loss}
    assert all(c.family.checkpoint_auto_class == c.head for c in cases if c.clause == "G1")
    assert {c.family.checkpoint_auto_class for c in cases if c.clause in ("G3", "G7")} == {base}
    assert {c.world_size for c in cases} == {2}
    assert {c.layout for c in cases} <= {None, "safetensors"}
    assert not any(c.clause.startswith("A") or c.clause == "P3" for c in cases)  # no model, not the sweep's


def test_the_loss_head_is_a_language_model_with_tensors_of_its_own_where_there_is_one():
    from zero3_conformance.architectures import loss_head

    # bart's causal LM head is its tied embedding; its seq2seq LM has a final logits bias the base class lacks.
    assert loss_head("bart") == "BartForConditionalGeneration"
    assert loss_head("llama") == "LlamaForCausalLM"  # the first LM head, where none holds more than another
    assert loss_head("vit") == "ViTForImageClassification"  # no language model head: another with a loss


def test_case_ids_name_the_head_and_never_collide_with_the_zoo():
    cases = _cases(["llama"], models=["llama"], clauses=["P4", "G7"], world_sizes=[2])
    ids = [c.id for c in cases]
    assert len(ids) == len(set(ids))
    assert "G7-loading_report_matches_baseline[transformers-llama.LlamaForCausalLM-safetensors-ws2-fp32]" in ids
    assert "G7-loading_report_matches_baseline[transformers-llama-safetensors-ws2-fp32]" in ids  # the zoo's, as before
    zoo = next(c for c in cases if c.family.name == "llama" and not c.family.model_type)
    assert zoo.head == "AutoModelForCausalLM"
    assert zoo.model == "llama"


def test_a_type_that_does_not_build_tiny_is_a_skip_with_its_reason(monkeypatch):
    from zero3_conformance import architectures

    monkeypatch.setattr(architectures, "MAX_PARAMETERS", 1000)
    cases = _cases(["mistral"], subjects=["reference"])
    assert cases
    assert all(c.skip.startswith("mistral: ") and "more than 1,000" in c.skip for c in cases)
    assert {c.clause for c in cases} == set(SWEEP_ROLES["base"] + SWEEP_ROLES["every class"])


def test_a_type_without_a_head_the_harness_trains_shows_its_numerics_as_skips():
    cases = _cases(["dpt"], subjects=["reference"], clauses=["N1", "S1"])
    assert cases
    assert all("is a head the harness makes a loss for" in c.skip for c in cases)


def test_unknown_types_are_a_usage_error_and_all_means_every_type():
    from zero3_conformance.architectures import model_types

    with pytest.raises(UsageError, match="unknown model type 'no-such-type'"):
        _cases(["no-such-type"])
    assert catalog.chosen_architectures(["all"]) == model_types()


def _tiny(model_type):
    from zero3_conformance.architectures import tiny_config

    return tiny_config(model_type)


@pytest.mark.parametrize(("head", "inputs"), [
    ("MistralForCausalLM", {"input_ids", "labels"}),
    ("ViTForImageClassification", {"pixel_values", "labels"}),
    ("Wav2Vec2ForSequenceClassification", {"input_values", "labels"}),
    ("LlavaForConditionalGeneration", {"input_ids", "labels"}),
])
def test_inputs_for_every_modality_make_the_head_return_a_loss(head, inputs):
    import torch
    import transformers

    model_type = {"Mistral": "mistral", "ViT": "vit", "Wav2Vec2": "wav2vec2", "Llava": "llava"}[
        next(p for p in ("Mistral", "ViT", "Wav2Vec2", "Llava") if head.startswith(p))]
    config = _tiny(model_type)
    cls = getattr(transformers, head)
    batch = training_batch(cls, config, seed=7)
    assert set(batch) == inputs
    torch.manual_seed(0)
    loss = cls._from_config(config).eval()(**batch).loss
    assert loss is not None
    assert torch.isfinite(loss)
    assert all(torch.equal(batch[k], training_batch(cls, config, seed=7)[k]) for k in batch)  # deterministic


def test_a_decoder_of_an_encoder_decoder_config_gets_labels_as_long_as_its_input():
    import transformers

    batch = training_batch(transformers.WhisperForCausalLM, _tiny("whisper"), seed=1)
    assert batch["labels"].shape == batch["input_ids"].shape
    seq2seq = training_batch(transformers.T5ForConditionalGeneration, _tiny("t5"), seed=1)
    assert seq2seq["labels"].shape[-1] == seq2seq["input_ids"].shape[-1] // 2


def test_an_input_the_harness_cannot_make_is_named():
    class NeedsSpectrogram:
        __name__ = "NeedsSpectrogram"

        def forward(self, input_features, labels=None):
            pass

    with pytest.raises(InputsUnavailable,
                       match=r"cannot make input_features, which NeedsSpectrogram\.forward requires"):
        training_batch(NeedsSpectrogram, object(), seed=0)


@pytest.mark.slow
@pytest.mark.xdist_group("harness-sweep")
def test_types_of_three_modalities_are_checked_for_real(tmp_path):
    """Text, vision and a multimodal model: construction, loading and numerics through their own classes."""
    out = tmp_path / "run"
    code = cli.main(["run", "--architectures", "mistral,vit,llava", "--clauses", "P1,G1,N1", "--world-sizes", "2",
                     "--out", str(out), "--quiet"])
    records = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert code == 0, [r["message"] for r in records if r["status"] != "PASS"]
    by_case = {r["case_id"]: r for r in records}
    assert all(r["status"] == "PASS" for r in records)
    for head in ("MistralForCausalLM", "ViTForImageClassification", "LlavaForConditionalGeneration"):
        assert {r["subject"] for r in records if r["clause"] == "N1" and r["head"] == head} == \
               {"transformers", "reference"}
    assert by_case["P1-from_config_partitioned[reference-vit.ViTModel-ws2-fp32]"]["model"] == "vit"


def _record(model, head, clause, subject, status):
    from zero3_conformance.results import Record

    sweep = bool(head) and not head.startswith("Auto")
    label = f"{model}.{head}" if sweep else model
    return Record(clause=clause, check="c", subject=subject, model=model, head=head, layout=None, world_size=2,
                  dtype="fp32", status=status, message="", duration_s=0.1, cell={}, sweep=sweep,
                  case_id=f"{clause}-c[{subject}-{label}-ws2-fp32]")


def test_coverage_counts_types_attempted_built_and_checked():
    from zero3_conformance.report.summary import CHECKED_WHEN_RAN, architecture_coverage, render

    records = [_record(t, f"{t.title()}Model", clause, subject, status)
               for t, status in (("vit", "PASS"), ("clip", "FAIL"), ("timm", "SKIP"))
               for clause in CHECKED_WHEN_RAN for subject in ("transformers", "reference")]
    records.append(_record("llama", "AutoModelForCausalLM", "P1", "reference", "PASS"))  # the zoo's: not counted
    coverage = architecture_coverage(records)
    assert (coverage["types"], coverage["built"], coverage["checked"]) == (3, 2, 2)  # a FAIL ran; a SKIP did not
    assert coverage["unchecked"] == ["timm"]
    assert coverage["reached"]["P1"] == 2
    assert coverage["clauses"]["G7"] == {"PASS": 2, "FAIL": 2, "SKIP": 2}
    assert "3 model types attempted, 2 built (some record not a SKIP), 2 checked" in render(records, len(records))
    assert architecture_coverage(records[-1:]) is None


def test_tensors_left_uninitialized_without_zero_are_listed_once_per_class():
    from zero3_conformance.report.summary import render

    left = ["text_decoder.cls.predictions.bias"]
    records = [_record("blip", "BlipForQuestionAnswering", clause, subject, "PASS")
               for clause in ("G3", "N1") for subject in ("transformers", "reference")]
    for record in records[:2]:
        record.metrics["undefined_without_zero"] = left
    text = render(records, len(records))
    assert "| blip | BlipForQuestionAnswering | `text_decoder.cls.predictions.bias` |" in text
    assert text.count("text_decoder.cls.predictions.bias") == 1
    assert "uninitialized without ZeRO" not in render(records[2:], 2)


def test_the_compatibility_report_shows_each_cells_coverage(tmp_path):
    from zero3_conformance.report.aggregate import aggregate
    from zero3_conformance.report.html import render_html
    from zero3_conformance.report.render import render_markdown
    from zero3_conformance.results import write_records

    cell = {"python": "3.11.7", "torch": "2.13.0", "deepspeed": "0.19.8", "transformers": "5.24.0",
            "accelerate": "1.15.0", "backend": "gloo", "device": "cpu"}
    records = [_record(t, f"{t.title()}Model", clause, "reference", status)
               for t, status in (("vit", "PASS"), ("timm", "SKIP")) for clause in ("P1", "P2", "G1", "G4", "G7")]
    for record in records:
        record.cell = cell
    (tmp_path / "run").mkdir()
    write_records(tmp_path / "run" / "results.jsonl", records)
    (tmp_path / "run" / "summary.md").write_text("done")
    report = aggregate([tmp_path / "run"])
    assert report["cells"][0]["architectures"]["checked"] == 1
    assert "| 2 | 1 | 1 | 2 |" in render_markdown(report, "cmd")  # attempted, built, checked, classes
    assert "2 model types attempted, 1 built, 1 checked, through 2 classes" in render_html(report, "cmd")


@pytest.mark.slow
@pytest.mark.xdist_group("harness-sweep")
def test_a_users_multimodal_checkpoint_is_checked_in_every_clause_family(tmp_path):
    """`--model PATH` on a checkpoint of an architecture beyond the zoo: inputs come from its config and
    signature, so construction, loading and numerics all run (none only SKIPs) and the run passes."""
    from zero3_conformance.zoo import checkpoint_model, sweep_family

    model = checkpoint_model(sweep_family("llava", "LlavaForConditionalGeneration", "LlavaForConditionalGeneration"))
    model.config.architectures = ["LlavaForConditionalGeneration"]
    model.save_pretrained(tmp_path / "ckpt")
    out = tmp_path / "run"
    code = cli.main(["run", "--model", str(tmp_path / "ckpt"), "--clauses", "P1,P2,G1,G7,N1,N4", "--world-sizes", "2",
                     "--out", str(out), "--quiet"])
    records = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert code == 0, [r["message"] for r in records if r["status"] != "PASS"]
    ran = {r["clause"][0] for r in records if r["status"] != "SKIP"}
    assert ran == {"P", "G", "N"}
    assert {r["head"] for r in records} == {"LlavaForConditionalGeneration"}


@pytest.mark.slow
@pytest.mark.xdist_group("harness-sweep")
def test_the_reference_loads_a_checkpoint_whose_fused_tensor_transformers_splits_on_load(tmp_path):
    """gte declares a one-to-many conversion (a fused up/gate projection split into two module tensors): the
    reference names and loads both, as transformers does without ZeRO. Its masked-LM head is tied and has a
    bias of its own, which S2's resize pads with zeros as transformers does."""
    out = tmp_path / "run"
    code = cli.main(["run", "--architectures", "gte", "--subject", "reference", "--clauses", "G1,G7,S2",
                     "--world-sizes", "2", "--out", str(out), "--quiet"])
    records = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert code == 0, [r["message"] for r in records]
    assert records, [r["message"] for r in records]
    assert all(r["status"] == "PASS" for r in records), [r["message"] for r in records]


@pytest.mark.slow
@pytest.mark.xdist_group("harness-sweep")
def test_harness_limits_are_decided_before_the_subjects_and_subject_faults_stay_failures(tmp_path):
    """A5's training step on a vision-text checkpoint whose config has no vocab_size takes inputs made from
    its config and forward signature, and holds for both subjects (a step that assumed a text model failed
    both). A fault inside the subjects' own calls stays a FAIL of both: CLIP's 0-dimensional logit_scale,
    which deepspeed 0.19.8's zero.Init cannot partition."""
    from transformers import AutoConfig

    from zero3_conformance.zoo import checkpoint_model, sweep_family

    def records_of(model_type, model_class, clauses):
        model = checkpoint_model(sweep_family(model_type, model_class, model_class))
        model.save_pretrained(tmp_path / model_type)
        out = tmp_path / f"run-{model_type}"
        cli.main(["run", "--model", str(tmp_path / model_type), "--clauses", clauses, "--world-sizes", "2",
                  "--out", str(out), "--quiet"])
        return [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]

    llava = records_of("llava", "LlavaModel", "A5")
    assert not hasattr(AutoConfig.from_pretrained(tmp_path / "llava"), "vocab_size")
    assert sorted((r["check"], r["subject"], r["status"]) for r in llava) == [
        (check, subject, "PASS") for check in ("documented_from_config", "documented_from_pretrained")
        for subject in ("reference", "transformers")], [r["message"] for r in llava]

    clip = records_of("clip", "CLIPModel", "P1")
    assert {(r["subject"], r["raw_status"]) for r in clip} == {("reference", "FAIL"), ("transformers", "FAIL")}
    assert all("self.dim() cannot be 0" in r["message"] for r in clip), [r["message"] for r in clip]
