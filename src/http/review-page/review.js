// The review page's script. Draft text is untrusted model output: it only ever reaches the page as text nodes
// (textContent / createTextNode), never as HTML; review-markdown.js reads its headings and lists into plain data
// first. Every API call names this tab's launch context and carries the CSRF token on changes; the server holds
// the FHIR token.
import { inlineParts, parseDraftText } from './review-markdown.js';

const launchContext = new URLSearchParams(window.location.search).get('context') ?? '';
const sessionEndedMessage =
  'Your session with the EHR has ended. Open this app again from the patient’s chart in your EHR.';
const noSessionMessage =
  'This app has no session with the EHR. Open it from the patient’s chart in your EHR.';
const statusLabels = {
  preliminary: 'Draft - not signed',
  final: 'Signed',
  'entered-in-error': 'Rejected',
  superseded: 'Replaced by a newer draft',
};
const kindLabels = {
  'progress-summary': 'Progress summary',
  'previsit-briefing': 'Pre-visit briefing',
  nudges: 'Suggested actions',
};
const removalReasons = {
  'no-citation': 'it cited no source',
  'unknown-citation': 'it cited a source that was not read for this draft',
  'other-patient': 'it cited another patient’s record',
};
/** Cited resources that can hold an image the service reads (issue 18): their lines get a thumbnail. */
const imageCitationTypes = new Set(['Media', 'DocumentReference', 'DiagnosticReport', 'ImagingStudy']);
/** The heading the service puts above its preliminary reads of the record's images (agents/image-reading.ts). */
const imageSectionPattern = /^Images: AI preliminary read/;
/** Draft headings sit below the draft's own title (h3): depth 1 is h4, and nothing goes deeper than h6. */
const draftHeadingOffset = 3;
let session;
let rejectTarget;
let signTarget;
let citationOpener;
let sessionEnded = false;
/** Drafts a regeneration was asked for in this tab: the request is queued, the old draft stays until replaced. */
const regenerationRequested = new Set();

const byId = (id) => document.getElementById(id);
const statusRegion = byId('status');
const errorRegion = byId('error');

function announce(message) {
  errorRegion.hidden = true;
  statusRegion.textContent = message;
}

function showError(message) {
  statusRegion.textContent = '';
  errorRegion.textContent = message;
  errorRegion.hidden = false;
}

/** The EHR no longer accepts this launch: one plain sentence, and nothing left that could act on stale data. */
function endSession() {
  sessionEnded = true;
  for (const dialog of document.querySelectorAll('dialog[open]')) dialog.close();
  byId('drafts').hidden = true;
  byId('drafts').setAttribute('aria-busy', 'false');
  byId('patient-line').hidden = true;
  byId('user-line').hidden = true;
  showError(session || launchContext ? sessionEndedMessage : noSessionMessage);
}

class SessionEndedError extends Error {}

async function api(method, path, body) {
  const headers = { accept: 'application/json' };
  if (launchContext) headers['x-launch-context'] = launchContext;
  if (method !== 'GET') {
    headers['content-type'] = 'application/json';
    headers['x-csrf-token'] = session?.csrfToken ?? '';
  }
  const response = await fetch(`/api/drafts${path}`, {
    method,
    headers,
    credentials: 'same-origin',
    body: method === 'GET' ? undefined : JSON.stringify(body ?? {}),
  });
  // 401 is the service's launch session or the EHR's refusal of the user's token: either way, over.
  if (response.status === 401) throw new SessionEndedError(sessionEndedMessage);
  const payload = await response.json().catch(() => undefined);
  if (!response.ok) {
    const issue = payload?.issue?.[0];
    const error = new Error(issue?.diagnostics ?? `HTTP ${response.status}`);
    error.status = response.status;
    throw error;
  }
  return payload;
}

function groupOf(draft) {
  if (session?.encounter && draft.encounterId === session.encounter) return 'launched';
  if (/nudge|action|suggest/i.test(draft.kind)) return 'actions';
  if (/briefing/i.test(draft.kind)) return 'briefing';
  return 'summary';
}

function parseDate(value) {
  const date = new Date(value);
  return Number.isNaN(date.getTime()) ? undefined : date;
}

function formatDateTime(value) {
  const date = parseDate(value);
  return date ? date.toLocaleString(undefined, { dateStyle: 'medium', timeStyle: 'short' }) : String(value);
}

function formatDay(value) {
  const date = parseDate(value);
  if (!date) return String(value);
  // A bare date has no time zone: show that calendar day, not the UTC midnight converted to local time.
  const dateOnly = /^\d{4}-\d{2}-\d{2}$/.test(String(value));
  return date.toLocaleDateString(undefined, {
    dateStyle: 'medium',
    ...(dateOnly ? { timeZone: 'UTC' } : {}),
  });
}

/** "Follow-up encounter, 20 Nov 2026": the visit as people name it. */
function visitText(label) {
  if (!label) return undefined;
  const when = label.start ? formatDay(label.start) : undefined;
  return [label.type ?? 'Visit', when].filter(Boolean).join(', ');
}

/** A name shown in words, with the FHIR reference it stands for on hover. */
function namedSpan(text, reference) {
  const span = document.createElement('span');
  span.textContent = text;
  if (reference) span.title = reference;
  return span;
}

function appendInline(container, text, { citations = true } = {}) {
  for (const part of inlineParts(text)) {
    if (part.type === 'citation' && citations) {
      const button = document.createElement('button');
      button.type = 'button';
      button.className = 'citation';
      button.textContent = part.label;
      button.setAttribute('aria-label', `Open cited source ${part.label}`);
      button.addEventListener('click', () => openCitation(part.resourceType, part.id, part.version, button));
      container.append(button);
    } else if (part.type === 'strong') {
      const strong = document.createElement('strong');
      strong.textContent = part.text;
      container.append(strong);
    } else {
      container.append(document.createTextNode(part.type === 'citation' ? part.label : part.text));
    }
  }
}

/**
 * The picture of a cited image, fetched through the API (read with the clinician's own token) as a base64 JPEG
 * and shown from a data: URL (the page's CSP allows images from this origin and data: only). Nothing is shown
 * when the source holds no picture or the EHR refuses it.
 */
async function loadCitationImage(image, type, id, size) {
  const reference = `${type}/${id}`;
  image.dataset.reference = reference;
  try {
    const picture = await api(
      'GET',
      `/citations/${encodeURIComponent(type)}/${encodeURIComponent(id)}/image${size === 'full' ? '?size=full' : ''}`,
    );
    if (picture?.contentType !== 'image/jpeg' || typeof picture.data !== 'string')
      throw new Error('no picture');
    // The citation view may have moved on to another source while this one loaded.
    if (image.dataset.reference !== reference) return;
    image.src = `data:image/jpeg;base64,${picture.data}`;
    image.width = picture.width;
    image.height = picture.height;
    image.hidden = false;
  } catch (error) {
    if (error instanceof SessionEndedError) return endSession();
    if (image.dataset.reference === reference) image.hidden = true;
  }
}

function thumbnailFor(text) {
  const cited = inlineParts(text).find(
    (part) => part.type === 'citation' && imageCitationTypes.has(part.resourceType),
  );
  if (!cited) return undefined;
  const image = document.createElement('img');
  image.className = 'citation-thumbnail';
  image.alt = `Thumbnail of the cited image ${cited.resourceType}/${cited.id}`;
  image.hidden = true;
  loadCitationImage(image, cited.resourceType, cited.id, 'thumbnail');
  return image;
}

function renderList(list, { thumbnails = false } = {}) {
  const element = document.createElement(list.ordered ? 'ol' : 'ul');
  for (const item of list.items) {
    const entry = document.createElement('li');
    const thumbnail = thumbnails ? thumbnailFor(item.text) : undefined;
    if (thumbnail) entry.append(thumbnail);
    appendInline(entry, item.text);
    for (const child of item.children) entry.append(renderList(child));
    element.append(entry);
  }
  return element;
}

/** The draft as headings, lists and paragraphs, each [Type/id] a button that opens the cited resource. */
function renderText(container, text) {
  container.replaceChildren();
  let inImageSection = false;
  for (const block of parseDraftText(text)) {
    if (block.type === 'heading') {
      inImageSection = imageSectionPattern.test(block.text);
      const heading = document.createElement(`h${Math.min(6, draftHeadingOffset + block.depth)}`);
      heading.className = 'draft-heading';
      appendInline(heading, block.text);
      container.append(heading);
    } else if (block.type === 'list') {
      container.append(renderList(block, { thumbnails: inImageSection }));
    } else if (block.type === 'rule') {
      container.append(document.createElement('hr'));
    } else {
      const paragraph = document.createElement('p');
      block.lines.forEach((line, index) => {
        if (index > 0) paragraph.append(document.createElement('br'));
        appendInline(paragraph, line);
      });
      container.append(paragraph);
    }
  }
}

/** What the citation check took out of a flagged draft, each with why. */
function renderRemoved(article, draft) {
  const removed = draft.removedStatements ?? [];
  const list = article.querySelector('.removed-list');
  list.replaceChildren();
  for (const statement of removed) {
    const entry = document.createElement('li');
    // Shown as the model wrote it, citations included, but not as buttons: these sources were not checked.
    const line = (statement.line ?? '').replace(/^\s*([-*+]|\d{1,3}[.)])\s+/, '').trim();
    if (line) {
      const quote = document.createElement('q');
      quote.textContent = line;
      entry.append(quote);
    } else entry.append(document.createTextNode('A statement (not shown here)'));
    const reason = document.createElement('span');
    reason.className = 'removed-reason';
    reason.textContent = ` - removed because ${removalReasons[statement.reason] ?? statement.reason}.`;
    entry.append(reason);
    list.append(entry);
  }
  list.hidden = removed.length === 0;
  article.querySelector('.removed-intro').hidden = removed.length === 0;
  article.querySelector('.removed-unknown').hidden = removed.length > 0;
}

function renderMeta(element, draft) {
  const parts = [kindLabels[draft.kind] ?? draft.kind, `drafted ${formatDateTime(draft.createdAt)}`].map(
    (text) => namedSpan(text),
  );
  // Rewritten by the service for a later version of the visit's record, before anyone touched it.
  if (draft.updatedAt) parts.push(namedSpan(`updated ${formatDateTime(draft.updatedAt)}`));
  if (draft.encounterId)
    parts.push(
      namedSpan(
        visitText(draft.encounterLabel) ?? 'visit details not available',
        `Encounter/${draft.encounterId}`,
      ),
    );
  if (draft.citations?.length)
    parts.push(namedSpan(`${draft.citations.length} cited source${draft.citations.length === 1 ? '' : 's'}`));
  if (draft.signedBy)
    parts.push(namedSpan(`signed by ${draft.signedByName ?? 'a clinician'}`, draft.signedBy));
  if (draft.regenerationRequested || regenerationRequested.has(draft.id))
    parts.push(namedSpan('a new draft has been requested'));
  if (draft.mode && draft.mode !== 'write')
    parts.push(
      namedSpan(draft.mode === 'hold' ? 'held until signed' : 'shadow mode: never written to the chart'),
    );
  element.replaceChildren();
  parts.forEach((part, index) => {
    if (index > 0) element.append(document.createTextNode(' · '));
    element.append(part);
  });
}

/**
 * A draft a clinician has already edited, signed or rejected is never rewritten by the service: when the record
 * changes afterwards, the page says so, and what changed, next to the draft.
 */
function renderRecordChanged(article, draft) {
  const change = draft.recordChanged;
  if (!change?.summary) return;
  const note = document.createElement('p');
  note.className = 'record-changed';
  note.setAttribute('role', 'note');
  note.textContent = change.summary;
  const references = [...(change.added ?? []), ...(change.changed ?? []), ...(change.removed ?? [])];
  if (references.length > 0) note.title = references.join(', ');
  article.querySelector('.draft-meta').after(note);
}

/** A cited QuestionnaireResponse: the patient's pre-visit answers (issue 16). */
const answersReference = /^QuestionnaireResponse\/[A-Za-z0-9\-.]{1,64}$/;

/**
 * The patient's own answers that the draft cites, next to its text: each question as it was asked and its answer,
 * read with the clinician's token through the citation view (so what the clinician may not read is not shown).
 * Answers are the patient's words: text nodes only, never HTML.
 */
function renderPatientAnswers(article, draft) {
  const references = [
    ...new Set((draft.citations ?? []).filter((reference) => answersReference.test(reference))),
  ];
  if (references.length === 0) return;
  const panel = document.createElement('section');
  panel.className = 'patient-answers';
  const headingId = `answers-title-${draft.id}`;
  panel.setAttribute('aria-labelledby', headingId);
  const heading = document.createElement('h4');
  heading.id = headingId;
  heading.textContent = 'The patient’s answers before the visit';
  const note = document.createElement('p');
  note.className = 'muted';
  note.textContent = 'As the patient gave them, not checked against the record.';
  panel.append(heading, note);
  article.querySelector('.draft-text').after(panel);
  for (const reference of references) {
    const [type, id] = reference.split('/');
    const loading = document.createElement('p');
    loading.className = 'muted';
    loading.textContent = `Loading ${reference}…`;
    const fields = document.createElement('dl');
    fields.className = 'fields answers';
    panel.append(loading, fields);
    api('GET', `/citations/${encodeURIComponent(type)}/${encodeURIComponent(id)}`).then(
      (view) => {
        for (const field of view.fields) {
          const term = document.createElement('dt');
          term.textContent = field.label;
          const value = document.createElement('dd');
          value.textContent = field.value;
          fields.append(term, value);
        }
        loading.textContent = `From ${reference}`;
      },
      (error) => {
        if (error instanceof SessionEndedError) return endSession();
        loading.textContent = `Could not read the answers (${reference}): ${error.message}`;
      },
    );
  }
}

function renderDraft(draft) {
  const article = byId('draft-template').content.firstElementChild.cloneNode(true);
  const titleId = `draft-title-${draft.id}`;
  const editorId = `draft-editor-${draft.id}`;
  const open = draft.status === 'preliminary';
  const launched = groupOf(draft) === 'launched';
  article.dataset.draftId = draft.id;
  article.dataset.status = draft.status;
  article.setAttribute('aria-labelledby', titleId);
  if (!open) article.classList.add('closed');
  if (launched) article.classList.add('launched');

  const title = article.querySelector('.draft-title');
  title.id = titleId;
  title.textContent = draft.title || kindLabels[draft.kind] || draft.kind;
  const badge = article.querySelector('.status-badge');
  badge.textContent = statusLabels[draft.status] ?? draft.status;
  badge.classList.add(draft.status);
  article.querySelector('.launched-badge').hidden = !launched;
  renderMeta(article.querySelector('.draft-meta'), draft);
  renderRecordChanged(article, draft);
  const flagged = article.querySelector('.flagged');
  flagged.hidden = !(draft.flagged && open);
  if (draft.flagged && open) renderRemoved(article, draft);
  renderText(article.querySelector('.draft-text'), draft.text ?? '');
  renderPatientAnswers(article, draft);

  const editor = article.querySelector('.editor');
  const textarea = article.querySelector('.editor-text');
  textarea.id = editorId;
  article.querySelector('.editor-label-text').textContent = `Edit text: ${title.textContent}`;
  const button = (name) => article.querySelector(`.${name}`);
  // Names start with the visible text (speech input users say what they see) and add which draft it acts on.
  for (const name of ['edit', 'sign', 'reject', 'regenerate']) {
    button(name).setAttribute('aria-label', `${button(name).textContent.trim()}: ${title.textContent}`);
  }

  const canChange = open && session?.canChange;
  for (const name of ['edit', 'sign', 'reject', 'regenerate']) button(name).disabled = !canChange;
  if (!open) for (const name of ['edit', 'sign', 'reject', 'regenerate']) button(name).hidden = true;

  const setEditing = (editing) => {
    editor.hidden = !editing;
    button('edit').hidden = editing;
    button('save').hidden = !editing;
    button('cancel-edit').hidden = !editing;
    article.querySelector('.draft-text').hidden = editing;
  };
  button('edit').addEventListener('click', () => {
    textarea.value = draft.text ?? '';
    setEditing(true);
    textarea.focus();
  });
  button('cancel-edit').addEventListener('click', () => {
    setEditing(false);
    button('edit').focus();
  });
  button('save').addEventListener('click', () =>
    act(
      article,
      'Saving the edit',
      () => api('PATCH', `/${encodeURIComponent(draft.id)}`, { text: textarea.value }),
      'Edit saved. The draft is still not signed.',
    ),
  );
  button('sign').addEventListener('click', () =>
    openSign(draft, title.textContent, button('sign'), () => {
      // Unsaved edits in the open editor are signed as shown.
      const body = editor.hidden ? {} : { text: textarea.value };
      act(
        article,
        'Signing',
        () => api('POST', `/${encodeURIComponent(draft.id)}/sign`, body),
        'Signed: the note is now final in the chart.',
      );
    }),
  );
  button('reject').addEventListener('click', () => openReject(draft, title.textContent, button('reject')));
  button('regenerate').addEventListener('click', () =>
    act(
      article,
      'Regenerating',
      async () => {
        const result = await api('POST', `/${encodeURIComponent(draft.id)}/regenerate`, {});
        regenerationRequested.add(draft.id);
        return result;
      },
      'A new draft was requested; it will replace this one when it is ready.',
    ),
  );
  return article;
}

/** Runs one change, then reloads the list and puts focus back on the changed draft (or the list). */
async function act(article, doing, call, done) {
  const buttons = article.querySelectorAll('button');
  for (const element of buttons) element.disabled = true;
  announce(`${doing}...`);
  let result;
  try {
    result = await call();
  } catch (error) {
    if (error instanceof SessionEndedError) return endSession();
    for (const element of buttons) element.disabled = false;
    showError(`${doing} failed: ${error.message}`);
    return;
  }
  try {
    await loadDrafts();
  } catch (error) {
    if (error instanceof SessionEndedError) return endSession();
    // The change itself succeeded; say so, rather than report a failure that did not happen.
    showError(`${done} The list could not be refreshed: ${error.message}`);
    return;
  }
  announce(done);
  const id = result?.draft?.id ?? article.dataset.draftId;
  const target = document.querySelector(`article[data-draft-id="${CSS.escape(id)}"] h3`);
  if (target) {
    target.tabIndex = -1;
    target.focus();
  } else byId('drafts').focus();
}

/** Open drafts first, then the newest. */
function reviewOrder(left, right) {
  const openness = Number(right.status === 'preliminary') - Number(left.status === 'preliminary');
  return openness || String(right.createdAt).localeCompare(String(left.createdAt));
}

async function loadDrafts() {
  const main = byId('drafts');
  main.setAttribute('aria-busy', 'true');
  const { drafts } = await api('GET', '');
  const lists = {};
  for (const list of document.querySelectorAll('.draft-list')) {
    list.replaceChildren();
    lists[list.dataset.group] = list;
  }
  for (const draft of [...drafts].sort(reviewOrder)) lists[groupOf(draft)].append(renderDraft(draft));
  for (const list of Object.values(lists)) {
    const group = list.dataset.group;
    // Nudges normally sit inside each draft under "Suggested actions"; the group of stand-alone nudge
    // drafts is shown only when there are some. The visit group exists only for a launch with an encounter.
    if (group === 'actions') list.closest('section').hidden = list.children.length === 0;
    if (group === 'launched') list.closest('section').hidden = !session?.encounter;
    if (list.children.length === 0) {
      const empty = document.createElement('p');
      empty.className = 'empty';
      empty.textContent = group === 'launched' ? 'No draft for this visit yet.' : 'No drafts.';
      list.append(empty);
    }
  }
  main.setAttribute('aria-busy', 'false');
}

async function openCitation(type, id, version, opener) {
  const dialog = byId('citation-dialog');
  citationOpener = opener;
  const reference = version ? `${type}/${id}/_history/${version}` : `${type}/${id}`;
  byId('citation-title').textContent = `Cited source: ${reference}`;
  byId('citation-loading').hidden = false;
  byId('citation-loading').textContent = 'Loading...';
  byId('citation-fields').replaceChildren();
  byId('citation-raw').textContent = '';
  byId('citation-raw-details').hidden = true;
  const picture = byId('citation-image');
  picture.hidden = true;
  picture.removeAttribute('src');
  picture.alt = `The cited image ${type}/${id}`;
  picture.dataset.reference = '';
  dialog.showModal();
  // The same picture larger, in the citation view; a source without one shows only its fields.
  if (imageCitationTypes.has(type)) loadCitationImage(picture, type, id, 'full');
  try {
    const view = await api(
      'GET',
      `/citations/${encodeURIComponent(type)}/${encodeURIComponent(id)}${version ? `/_history/${encodeURIComponent(version)}` : ''}`,
    );
    const fields = byId('citation-fields');
    for (const field of view.fields) {
      const term = document.createElement('dt');
      term.textContent = field.label;
      const value = document.createElement('dd');
      value.textContent = field.value;
      fields.append(term, value);
    }
    byId('citation-raw').textContent = JSON.stringify(view.resource, null, 2);
    byId('citation-raw-details').hidden = false;
    byId('citation-loading').hidden = true;
  } catch (error) {
    if (error instanceof SessionEndedError) return endSession();
    byId('citation-loading').textContent = `Could not open ${reference}: ${error.message}`;
  }
}

/** Signing files the note as final under the clinician's name: one deliberate confirmation first. */
function openSign(draft, name, opener, confirm) {
  signTarget = { opener, confirm };
  byId('sign-draft-name').textContent = name;
  byId('sign-flagged').hidden = !draft.flagged;
  byId('sign-dialog').showModal();
  byId('sign-cancel').focus();
}

function openReject(draft, name, opener) {
  rejectTarget = { draft, opener };
  byId('reject-draft-name').textContent = name;
  byId('reject-reason').value = '';
  byId('reject-error').hidden = true;
  byId('reject-dialog').showModal();
  byId('reject-reason').focus();
}

function wireDialogs() {
  const citationDialog = byId('citation-dialog');
  byId('citation-close').addEventListener('click', () => citationDialog.close());
  citationDialog.addEventListener('close', () => {
    if (!sessionEnded) citationOpener?.focus();
  });

  const signDialog = byId('sign-dialog');
  byId('sign-cancel').addEventListener('click', () => signDialog.close());
  signDialog.addEventListener('close', () => {
    if (!sessionEnded && signDialog.returnValue !== 'confirmed' && signTarget?.opener?.isConnected)
      signTarget.opener.focus();
    signDialog.returnValue = '';
  });
  byId('sign-confirm').addEventListener('click', () => {
    signDialog.close('confirmed');
    signTarget?.confirm();
  });

  const rejectDialog = byId('reject-dialog');
  byId('reject-cancel').addEventListener('click', () => rejectDialog.close());
  rejectDialog.addEventListener('close', () => {
    if (!sessionEnded && rejectTarget?.opener?.isConnected) rejectTarget.opener.focus();
  });
  byId('reject-form').addEventListener('submit', (event) => {
    event.preventDefault();
    const reason = byId('reject-reason').value.trim();
    if (reason.length < 3) {
      byId('reject-error').textContent = 'Please give a reason (at least 3 characters).';
      byId('reject-error').hidden = false;
      byId('reject-reason').focus();
      return;
    }
    const { draft } = rejectTarget;
    rejectDialog.close();
    const article = document.querySelector(`article[data-draft-id="${CSS.escape(draft.id)}"]`);
    act(
      article,
      'Rejecting',
      () => api('POST', `/${encodeURIComponent(draft.id)}/reject`, { reason }),
      'Draft rejected; it will not enter the chart.',
    );
  });
}

/** "Patient: Ada Testperson · Visit: Follow-up encounter, 20 Nov 2026", ids on hover. */
function renderHeader() {
  const line = byId('patient-line');
  line.replaceChildren(
    document.createTextNode('Patient: '),
    namedSpan(session.patientName ?? `Patient/${session.patient}`, `Patient/${session.patient}`),
  );
  if (session.encounter) {
    const visit = visitText(session.encounterLabel) ?? 'details not available';
    line.append(document.createTextNode(' · Visit: '), namedSpan(visit, `Encounter/${session.encounter}`));
    byId('launched-heading').textContent = `This visit: ${visit}`;
  }
  if (session.userName) {
    const user = byId('user-line');
    user.replaceChildren(
      document.createTextNode('Signed in as '),
      namedSpan(session.userName, session.fhirUser),
    );
    user.hidden = false;
  }
}

async function start() {
  wireDialogs();
  try {
    session = await api('GET', '/session');
    renderHeader();
    if (!session.canChange)
      showError('You are signed in as a user who cannot sign or change drafts; the drafts are read-only.');
    await loadDrafts();
  } catch (error) {
    if (error instanceof SessionEndedError) return endSession();
    byId('patient-line').textContent = 'The drafts could not be loaded.';
    byId('drafts').setAttribute('aria-busy', 'false');
    showError(error.message);
  }
}

if (document.readyState === 'loading') document.addEventListener('DOMContentLoaded', start);
else start();
