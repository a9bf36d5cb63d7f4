"""Files in and out: the one safe reader, text decoding, input readers (txt, md, html,
pdf, json, jsonl, csv), atomic writes, file naming (every name fits 255 bytes), file
references of file jobs (inbox, outbox, done/, failed/), and client-side submission."""
