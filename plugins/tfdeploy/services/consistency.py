"""Do serving and the registry agree? Checked before a run takes over the lease of a run that died mid-deploy."""

from __future__ import annotations

from tfdeploy.core.models_config import ServedModel


def serving_problems(model: str, production: int | None, stable: ServedModel | None) -> list[str]:
    """What differs between the registry's production version of ``model`` and the stable pool's models.config
    entry (the label ``stable`` answers unversioned calls); empty when they agree."""
    if production is None:
        if stable is not None and stable.labels.get("stable") is not None:
            return [
                f"the registry has no production version of {model} but the stable pool serves "
                f"v{stable.labels['stable']} as stable"
            ]
        return []
    if stable is None:
        return [
            f"the registry says v{production} of {model} is in production but the stable pool does not serve {model}"
        ]
    problems = []
    if production not in stable.versions:
        problems.append(
            f"the registry says v{production} of {model} is in production but the stable pool serves "
            f"{', '.join(f'v{v}' for v in stable.versions) or 'no version'}"
        )
    label = stable.labels.get("stable")
    if label != production:
        problems.append(
            f"the stable pool's label `stable` points at {f'v{label}' if label else 'nothing'}, not v{production}"
        )
    return problems
