// The review page's script. Draft text is untrusted model output: it only ever reaches the page as text nodes
// (textContent / createTextNode), never as HTML. Every API call names this tab's launch context and carries the
// CSRF token on changes; the server holds the FHIR token.
(() => {
  const launchContext = new URLSearchParams(window.location.search).get('context') ?? '';
  const citationPattern =
    /\[([A-Z][A-Za-z]{1,63})\/([A-Za-z0-9\-.]{1,64})(?:\/_history\/([A-Za-z0-9\-.]{1,64}))?\]/g;
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
  let session;
  let rejectTarget;
  let signTarget;
  let citationOpener;
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
    const payload = await response.json().catch(() => undefined);
    if (!response.ok) {
      const issue = payload?.issue?.[0];
      const reason = issue?.diagnostics ?? `HTTP ${response.status}`;
      const error = new Error(response.status === 401 ? `Your session has ended: ${reason}` : reason);
      error.status = response.status;
      throw error;
    }
    return payload;
  }

  function groupOf(kind) {
    if (/nudge|action|suggest/i.test(kind)) return 'actions';
    if (/briefing/i.test(kind)) return 'briefing';
    return 'summary';
  }

  function formatDate(value) {
    const date = new Date(value);
    return Number.isNaN(date.getTime()) ? value : date.toLocaleString();
  }

  /** Text with each [Type/id] as a button that opens the cited resource; everything else as plain text nodes. */
  function renderText(container, text) {
    container.replaceChildren();
    let last = 0;
    for (const match of text.matchAll(citationPattern)) {
      if (match.index > last) container.append(document.createTextNode(text.slice(last, match.index)));
      const button = document.createElement('button');
      button.type = 'button';
      button.className = 'citation';
      button.textContent = match[0];
      button.setAttribute('aria-label', `Open cited source ${match[0]}`);
      button.addEventListener('click', () => openCitation(match[1], match[2], match[3], button));
      container.append(button);
      last = match.index + match[0].length;
    }
    if (last < text.length) container.append(document.createTextNode(text.slice(last)));
  }

  function renderDraft(draft) {
    const article = byId('draft-template').content.firstElementChild.cloneNode(true);
    const titleId = `draft-title-${draft.id}`;
    const editorId = `draft-editor-${draft.id}`;
    const open = draft.status === 'preliminary';
    article.dataset.draftId = draft.id;
    article.dataset.status = draft.status;
    article.setAttribute('aria-labelledby', titleId);
    if (!open) article.classList.add('closed');

    const title = article.querySelector('.draft-title');
    title.id = titleId;
    title.textContent = draft.title || kindLabels[draft.kind] || draft.kind;
    const badge = article.querySelector('.status-badge');
    badge.textContent = statusLabels[draft.status] ?? draft.status;
    badge.classList.add(draft.status);
    const meta = [kindLabels[draft.kind] ?? draft.kind, `drafted ${formatDate(draft.createdAt)}`];
    if (draft.encounterId) meta.push(`encounter ${draft.encounterId}`);
    if (draft.citations?.length) meta.push(`${draft.citations.length} cited sources`);
    if (draft.signedBy) meta.push(`signed by ${draft.signedBy}`);
    if (draft.regenerationRequested || regenerationRequested.has(draft.id))
      meta.push('a new draft has been requested');
    if (draft.mode && draft.mode !== 'write')
      meta.push(draft.mode === 'hold' ? 'held until signed' : 'shadow mode: never written to the chart');
    article.querySelector('.draft-meta').textContent = meta.join(' · ');
    article.querySelector('.flagged').hidden = !draft.flagged;
    renderText(article.querySelector('.draft-text'), draft.text ?? '');

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
      for (const element of buttons) element.disabled = false;
      showError(`${doing} failed: ${error.message}`);
      return;
    }
    try {
      await loadDrafts();
    } catch (error) {
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

  async function loadDrafts() {
    const main = byId('drafts');
    main.setAttribute('aria-busy', 'true');
    const { drafts } = await api('GET', '');
    const lists = {};
    for (const list of document.querySelectorAll('.draft-list')) {
      list.replaceChildren();
      lists[list.dataset.group] = list;
    }
    const sorted = [...drafts].sort((a, b) => String(b.createdAt).localeCompare(String(a.createdAt)));
    for (const draft of sorted) lists[groupOf(draft.kind)].append(renderDraft(draft));
    for (const list of Object.values(lists)) {
      // Nudges normally sit inside each draft under "Suggested actions"; the group of stand-alone nudge
      // drafts is shown only when there are some.
      if (list.dataset.group === 'actions') list.closest('section').hidden = list.children.length === 0;
      if (list.children.length === 0) {
        const empty = document.createElement('p');
        empty.className = 'empty';
        empty.textContent = 'No drafts.';
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
    dialog.showModal();
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
    citationDialog.addEventListener('close', () => citationOpener?.focus());

    const signDialog = byId('sign-dialog');
    byId('sign-cancel').addEventListener('click', () => signDialog.close());
    signDialog.addEventListener('close', () => {
      if (signDialog.returnValue !== 'confirmed' && signTarget?.opener?.isConnected)
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
      if (rejectTarget?.opener?.isConnected) rejectTarget.opener.focus();
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

  async function start() {
    wireDialogs();
    try {
      session = await api('GET', '/session');
      const who = session.patientName
        ? `${session.patientName} (Patient/${session.patient})`
        : `Patient/${session.patient}`;
      byId('patient-line').textContent =
        `Patient: ${who}${session.encounter ? ` · Encounter/${session.encounter}` : ''}`;
      if (!session.canChange)
        showError('You are signed in as a user who cannot sign or change drafts; the drafts are read-only.');
      await loadDrafts();
    } catch (error) {
      byId('patient-line').textContent = 'No patient in context.';
      byId('drafts').setAttribute('aria-busy', 'false');
      showError(error.message);
    }
  }

  if (document.readyState === 'loading') document.addEventListener('DOMContentLoaded', start);
  else start();
})();
