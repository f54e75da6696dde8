"""Model specs → loaded models → the classifier interface shared by every task."""

from clipcompare.models.spec import ModelSpec, parse_spec

__all__ = ["ModelSpec", "parse_spec", "Classifier", "create_classifier", "load_model", "LoadedModel"]


def __getattr__(name: str):
    # torch-heavy modules load lazily so `clipcompare --help` stays instant
    if name in ("Classifier", "create_classifier"):
        from clipcompare.models import classifier

        return getattr(classifier, name)
    if name == "load_model":
        from clipcompare.models.loading import load_model

        return load_model
    if name == "LoadedModel":
        from clipcompare.models.build_info import LoadedModel

        return LoadedModel
    raise AttributeError(name)
