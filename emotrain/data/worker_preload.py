"""What the loader's fork server imports once, so that every worker forks with it loaded.

``transformers`` resolves its classes lazily: naming ``transformers`` alone leaves
``AutoTokenizer`` to be resolved, at a cost of seconds, in each worker of each loader (every
validation pass builds one). Resolving the tokenizer classes here does it once per process tree.
"""

from emotrain.signals import fork_server_dies_with_parent

fork_server_dies_with_parent()  # first: a fork server whose training process is gone must not linger

import decord  # noqa: F401, E402
from transformers import AutoTokenizer, BertTokenizerFast  # noqa: F401, E402
