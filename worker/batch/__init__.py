"""OpenAI Batch API files, offline: reading the input lines, answering each request,
and building the output and error files from database rows."""
