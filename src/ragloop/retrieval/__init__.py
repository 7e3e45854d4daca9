"""Stage 2 of the loop: a question -> the passages the model will cite, from the versioned knowledge base.

Dense (embedding) and full-text (BM25) search run separately and are fused by weighted reciprocal rank
fusion, keeping each method's own score and rank for the record.
"""
