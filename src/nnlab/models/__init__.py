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


def inputs(data):
    """`${nnlab.inputs:${data}}`: {name: one sample's shape} of every input (model=graph)."""
    from omegaconf import OmegaConf

    from nnlab.models.sequential import input_shapes

    shapes = input_shapes(data)
    return None if shapes is None else OmegaConf.create(shapes)


def targets(data):
    """`${nnlab.targets:${data}}`: the names of the data's targets (task=multi_output)."""
    from omegaconf import OmegaConf

    from nnlab.models.sequential import target_names

    names = target_names(data)
    return None if names is None else OmegaConf.create(names)


def output_size(task, data):
    """`${nnlab.output_size:${task},${data}}`: model=graph's output widths: {output: width}
    for task=multi_output, else the one width `nnlab.task_width` gives."""
    from omegaconf import OmegaConf

    from nnlab.models.sequential import task_width

    if task.get("outputs") is not None:
        from nnlab.tasks.multi_output import output_width

        widths = {str(k): output_width(v) for k, v in task.outputs.items()}
        return OmegaConf.create(widths)
    return task_width(task, data)


MODEL_RESOLVERS = {
    "nnlab.example_shape": example_shape,
    "nnlab.task_width": task_width,
    "nnlab.inputs": inputs,
    "nnlab.targets": targets,
    "nnlab.output_size": output_size,
}
