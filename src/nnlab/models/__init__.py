"""Plain nn.Modules, one family per file, no training logic."""


def example_shape(data):
    """`${nnlab.example_shape:${data}}` (see sequential.py); torch loads only when it resolves."""
    from omegaconf import OmegaConf

    from nnlab.models.sequential import example_shape

    shape = example_shape(data)  # a ListConfig: OmegaConf.resolve keeps it
    return None if shape is None else OmegaConf.create(shape)


def task_width(task, data):
    """`${nnlab.task_width:${task},${data}}` (see sequential.py)."""
    from nnlab.models.sequential import task_width

    return task_width(task, data)


MODEL_RESOLVERS = {"nnlab.example_shape": example_shape, "nnlab.task_width": task_width}
