// Prints golden GPT-2 token ids for stability/data/gpt2_tokenizer_test.cc, computed by the
// npm package gpt-3-encoder (an independent JavaScript implementation of the same BPE):
//   node tools/gpt2_goldens.js
// Texts avoid U+0085 and U+FEFF, the two characters where JavaScript's \s differs from
// Unicode White_Space (which tiktoken and our tokenizer use).
const path = require('path');
const { encode } = require(path.join(__dirname, '..', '.cache/npm/node_modules/gpt-3-encoder'));
const texts = [
  "Hello world! The quick brown fox.",
  "I'm sure they'll say it's 'fine', we've done what you'd've DON'T",
  "numbers: 3.14159, 1,000,000 and 2026-11-28 or 0x7fff",
  "  leading spaces,   runs   of spaces and trailing   ",
  "tabs\tand\nnewlines\n\nparagraph\r\nwindows line\n\n\n end",
  "Ünïcödé: café, naïve, Straße, Ελληνικά, русский, 日本語のテキスト, 한국어",
  "emoji 🙂👍🏽 and symbols ©®™ — “quotes” … ½ ² ³",
  "<|endoftext|> is ordinary text here",
  "a\u00a0b\u2003c\u3000d",
  "!!!??? ... --- *** ### @@@",
];
for (const t of texts) console.log(JSON.stringify({ text: t, ids: encode(t) }));
