// The chat page (serve/chat.py): asks /v1/chat/completions with stream: true and shows the answer as its
// tokens arrive, then turns [n] into buttons that open the cited passage and adds thumbs and a correction.
// Everything from the server (answers, passages: documents are untrusted) goes in as text nodes, never as
// HTML. The key stays in its HttpOnly cookie; every request carries the header that proves it comes from
// this page (serve/auth.py, request_caller).
(function () {
  'use strict';
  const root = document.getElementById('chat');
  const HEADER = root.dataset.csrfHeader;
  const log = document.getElementById('log');
  const form = document.getElementById('ask');
  const input = document.getElementById('question');
  const status = document.getElementById('status');
  const conversation = document.getElementById('conversation');
  let messages = []; // the turns so far, sent back with each question so the conversation continues
  let busy = false;

  function headers(json) {
    const h = {};
    h[HEADER] = 'ragloop-chat';
    if (json) h['Content-Type'] = 'application/json';
    return h;
  }

  function el(tag, className, text) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined) node.textContent = text;
    return node;
  }

  async function errorOf(response) {
    try {
      const body = await response.json();
      return (body.error && body.error.message) || response.statusText;
    } catch (e) {
      return response.status + ' ' + response.statusText;
    }
  }

  // Reads the server-sent events of a streamed answer; onText gets the answer so far after each delta.
  async function readStream(response, onText) {
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    let buffer = '', text = '', record = null, error = null;
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += decoder.decode(value, { stream: true });
      let cut;
      while ((cut = buffer.indexOf('\n\n')) >= 0) {
        const event = buffer.slice(0, cut);
        buffer = buffer.slice(cut + 2);
        for (const line of event.split('\n')) {
          if (!line.startsWith('data:')) continue;
          const data = line.slice(5).trim();
          if (data === '[DONE]') continue;
          const payload = JSON.parse(data);
          if (payload.error) { error = payload.error.message; continue; }
          const choice = (payload.choices || [])[0];
          if (choice && choice.delta && choice.delta.content) {
            text += choice.delta.content;
            onText(text);
          }
          if (payload.ragloop) record = payload.ragloop;
        }
      }
    }
    return { text, record, error };
  }

  // The answer with each valid [n] as a button opening passage n.
  function renderAnswer(node, text, record, turn) {
    node.textContent = '';
    const n = record.passages.length;
    const re = /\[(\d+)\]/g;
    let last = 0, m;
    while ((m = re.exec(text)) !== null) {
      const k = parseInt(m[1], 10);
      if (k < 1 || k > n) continue;
      node.appendChild(document.createTextNode(text.slice(last, m.index)));
      const button = el('button', 'cite', '[' + k + ']');
      button.type = 'button';
      button.dataset.n = String(k);
      button.title = record.passages[k - 1].title || record.passages[k - 1].source_path || '';
      button.addEventListener('click', () => openPassage(record.interaction_id, k, turn));
      node.appendChild(button);
      last = m.index + m[0].length;
    }
    node.appendChild(document.createTextNode(text.slice(last)));
  }

  async function openPassage(interactionId, n, turn) {
    let view = turn.querySelector('.passage-view');
    if (!view) {
      view = el('div', 'passage-view');
      turn.insertBefore(view, turn.querySelector('.feedback'));
    }
    view.textContent = 'Loading passage [' + n + ']…';
    const response = await fetch('/chat/passages/' + encodeURIComponent(interactionId) + '/' + n, {
      headers: headers(false), credentials: 'same-origin',
    });
    if (!response.ok) { view.textContent = await errorOf(response); return; }
    const p = await response.json();
    view.textContent = '';
    view.dataset.n = String(n);
    view.appendChild(el('div', 'title', '[' + n + '] ' + (p.title || p.source_path || '')));
    const where = [p.source_path, p.section].filter(Boolean).join(' · ');
    view.appendChild(el('div', 'muted', where));
    view.appendChild(el('div', 'text', p.text === null ? '(This passage is no longer in the knowledge base.)' : p.text));
  }

  function feedbackBar(interactionId) {
    const bar = el('div', 'bar');
    const note = el('span', 'muted fb-status');
    async function send(body) {
      note.textContent = 'Sending…';
      const response = await fetch('/api/interactions/' + encodeURIComponent(interactionId) + '/feedback', {
        method: 'POST', headers: headers(true), credentials: 'same-origin', body: JSON.stringify(body),
      });
      note.textContent = response.ok ? 'Thank you: recorded.' : await errorOf(response);
      return response.ok;
    }
    for (const [value, label] of [['up', 'Helpful'], ['down', 'Not helpful']]) {
      const button = el('button', 'thumbs thumbs-' + value, label);
      button.type = 'button';
      button.setAttribute('aria-pressed', 'false');
      button.addEventListener('click', async () => {
        if (await send({ thumbs: value })) {
          bar.querySelectorAll('.thumbs').forEach(b => b.setAttribute('aria-pressed', String(b === button)));
        }
      });
      bar.appendChild(button);
    }
    const correct = el('button', 'correct', 'Suggest a correction');
    correct.type = 'button';
    const box = el('div', 'correction-box');
    box.hidden = true;
    const area = el('textarea', 'correction');
    area.placeholder = 'What should the answer have said? (a reviewer reads it before it is used)';
    const submit = el('button', 'send-correction', 'Send correction');
    submit.type = 'button';
    submit.addEventListener('click', async () => {
      if (!area.value.trim()) return;
      if (await send({ corrected_answer: area.value })) box.hidden = true;
    });
    box.appendChild(area);
    box.appendChild(submit);
    correct.addEventListener('click', () => { box.hidden = !box.hidden; if (!box.hidden) area.focus(); });
    bar.appendChild(correct);
    bar.appendChild(note);
    const wrap = el('div', 'feedback');
    wrap.appendChild(bar);
    wrap.appendChild(box);
    return wrap;
  }

  async function ask(question) {
    busy = true;
    status.textContent = 'Answering…';
    const turn = el('div', 'turn');
    turn.appendChild(el('div', 'question', question));
    const answer = el('div', 'answer');
    answer.dataset.state = 'streaming';
    turn.appendChild(answer);
    log.appendChild(turn);
    const sent = messages.concat([{ role: 'user', content: question }]);
    let result = { text: '', record: null, error: null };
    try {
      const response = await fetch('/v1/chat/completions', {
        method: 'POST', headers: headers(true), credentials: 'same-origin',
        body: JSON.stringify({ messages: sent, stream: true }),
      });
      if (response.ok) {
        result = await readStream(response, text => { answer.textContent = text; });
      } else {
        result.error = await errorOf(response);
      }
    } catch (e) {
      result.error = 'The connection broke off: ' + e.message;
    }
    if (result.error || !result.record) {
      // Not recorded: the turn is not part of the conversation, so the next question does not carry it.
      answer.dataset.state = 'error';
      turn.appendChild(el('div', 'error', result.error || 'The answer was not recorded.'));
    } else {
      const record = result.record;
      renderAnswer(answer, result.text, record, turn);
      messages = sent.concat([{ role: 'assistant', content: result.text }]);
      turn.dataset.interactionId = record.interaction_id;
      turn.dataset.turnIndex = String(record.turn_index);
      conversation.dataset.id = record.conversation_id;
      conversation.textContent = record.conversation_id.slice(0, 8);
      turn.appendChild(feedbackBar(record.interaction_id));
      answer.dataset.state = 'done';
    }
    status.textContent = '';
    busy = false;
  }

  form.addEventListener('submit', event => {
    event.preventDefault();
    const question = input.value.trim();
    if (!question || busy) return;
    input.value = '';
    ask(question);
  });
  input.addEventListener('keydown', event => {
    if (event.key === 'Enter' && !event.shiftKey) { event.preventDefault(); form.requestSubmit(); }
  });
  document.getElementById('new-conversation').addEventListener('click', () => {
    if (busy) return;
    messages = [];
    log.textContent = '';
    conversation.dataset.id = '';
    conversation.textContent = '(new)';
    input.focus();
  });
  input.focus();
})();
