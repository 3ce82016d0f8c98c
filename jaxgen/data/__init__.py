"""Input pipelines: tfds data_source + grain, the scikit-learn digits, 2-D toy distributions.

    it = make_train_iterator(config.data, global_batch_size=B, seed=s)  # this process's batches
    batch = next(it)            # {'x': float32 (B // process_count, ...), 'label': int32 (...)}
    state = it.get_state()      # small dict; it.set_state(state) restores the exact position
    test = load_split(config.data, config.data.split_test)   # whole split, NumPy
    info = dataset_info(config.data)                          # name, shape, num_classes, sizes
"""
from jaxgen.data.pipeline import (  # noqa: F401
    ACCEPTED_NAMES,
    KNOWN_TFDS,
    DatasetInfo,
    dataset_info,
    default_data_config,
    load_split,
    make_train_iterator,
)
from jaxgen.data.tfds_source import DatasetNotPreparedError  # noqa: F401
from jaxgen.data.toy import TOY_NAMES, gmm_grid_params, sample_toy  # noqa: F401
