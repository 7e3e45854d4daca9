"""Stage 1 of the loop: files -> sections -> token-sized chunks -> embedded rows in the versioned
knowledge base (a LanceDB table whose every version is a KB version recorded in the database)."""
