// One text-only conversation with the official JS client, through the relay.
// Usage: node --experimental-websocket conversation.mjs SIGNED_URL TEXT...
// Prints one JSON line: the conversation id, the agent's replies, how it ended.
import { Conversation } from "@elevenlabs/client";

const [signedUrl, ...texts] = process.argv.slice(2);
const replies = [];
let waiting = null;
let disconnect = null;
const ended = new Promise((resolve) => {
  disconnect = resolve;
});

function reply(expected) {
  if (replies.includes(expected)) return Promise.resolve();
  return new Promise((resolve, reject) => {
    waiting = { expected, resolve };
    setTimeout(() => reject(new Error(`no reply ${expected} in ${JSON.stringify(replies)}`)), 10000);
  });
}

const conversation = await Conversation.startSession({
  signedUrl,
  textOnly: true,
  userId: "user-js",
  onMessage: ({ source, message }) => {
    if (source !== "ai") return;
    replies.push(message);
    if (waiting && message === waiting.expected) waiting.resolve();
  },
  onDisconnect: (details) => disconnect(details),
  onError: (message) => console.error(`error: ${message}`),
});
const conversationId = conversation.getId();
for (const text of texts) {
  conversation.sendUserMessage(text);
  await reply(`You said: ${text}`);
}
await conversation.endSession();
const details = await ended;
console.log(JSON.stringify({ conversationId, replies, reason: details.reason }));
process.exit(0);
