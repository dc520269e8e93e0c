"""The paper's evaluations beyond passkey retrieval, as tools that run offline on any model:
a long-document corpus (:mod:`.corpus`), its BPE tokenizer (:mod:`.bpe`), perplexity by
position for language models trained per pattern (:mod:`.lm`, Table 1), a RULER-style task
suite (:mod:`.ruler`, Table 2) and linear probing of hidden states (:mod:`.probe`, Figure 5).
See docs/evaluation.md."""
