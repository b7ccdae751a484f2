"""What the loader's fork server imports once, so that every worker forks with it loaded.

``transformers`` resolves its classes lazily: naming ``transformers`` alone leaves
``AutoTokenizer`` to be resolved, at a cost of seconds, in each worker of each loader (every
validation pass builds one). Resolving the tokenizer classes here does it once per process tree.
"""

import decord  # noqa: F401
from transformers import AutoTokenizer, BertTokenizerFast  # noqa: F401
