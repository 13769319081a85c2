"""A correct subject in processes whose builds without ZeRO come out empty: imported in a rank (as the subject's
module), it makes every model built there with no ZeRO-3 config alive lose its parameters, the way a stack that
spoils its process does. The parent and any process without a process group (the clean structure's) build as
usual. A check that judges the subject against such a baseline compares nothing and must not PASS."""

from zero3_conformance.mutation.mutants import empty_builds_where
from zero3_conformance.subjects import ReferenceSubject, register


def _rank_without_zero3():
    import torch.distributed as dist
    from transformers.integrations import is_deepspeed_zero3_enabled

    return dist.is_initialized() and not is_deepspeed_zero3_enabled()


empty_builds_where(_rank_without_zero3)


class CorrectSubject(ReferenceSubject):
    """The reference, unchanged: only the baselines beside it are empty."""


register("empty-baseline", CorrectSubject)
