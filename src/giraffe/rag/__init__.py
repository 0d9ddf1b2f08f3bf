"""Retrieval-augmented generation: ask your own documents, with numbered sources.

    giraffe rag add notes/ --kb work      # read, chunk, embed, store (SQLite)
    giraffe rag ask "When is the audit?" --kb work
    giraffe summarize report.pdf --method map-reduce

Modules: `read` (files -> pages of text, or a reason to skip), `chunk` (text -> token-
sized chunks with offsets), `store` (one SQLite file per knowledge base, exact cosine
search; `ann`, an HNSW index it uses above 200,000 chunks), `bm25` (keyword scores), `ingest` (files -> store, one transaction per
document), `retrieve`, `answer` (prompt with numbered passages, cited answer), `chains`
(long-document summaries), `evaluate` (the shipped retrieval evaluation), `knowledge`
(the facade the server receives), `command`.
"""
