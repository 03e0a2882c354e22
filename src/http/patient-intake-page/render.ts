import type { AskedQuestion } from '../../patient-intake/interview.ts';
import type { IntakePage, LinkProblem } from '../../patient-intake/patient-intake-service.ts';

/**
 * The patient's pages, rendered on the server: plain forms that work without script, large text, one column,
 * every control labelled, errors tied to their fields, the language of the page declared. Every value is
 * escaped; the page carries nothing from the record beyond what the site allows (the lists, when configured).
 */
function escapeHtml(text: string): string {
  return text.replace(/[&<>"']/g, (character) => `&#${character.charCodeAt(0)};`);
}

interface Words {
  yes: string;
  no: string;
  next: string;
  send: string;
  required: string;
  optional: string;
  problems: Record<'required' | 'too-long' | 'invalid', string>;
  fixBelow: string;
  intro: string;
  recordMedications: string;
  recordAllergies: string;
  recordNone: string;
  recordNote: string;
  doneTitle: string;
  done: string;
  soon: string;
  urgentTitle: string;
  problemTitle: string;
  linkProblems: Record<LinkProblem | 'rate-limited', string>;
  characters: (count: number) => string;
}

const words: Record<string, Words> = {
  en: {
    yes: 'Yes',
    no: 'No',
    next: 'Next',
    send: 'Send my answers',
    required: 'required',
    optional: 'optional',
    problems: {
      required: 'Please answer this question.',
      'too-long': 'This answer is too long. Please shorten it.',
      invalid: 'Please choose one of the answers offered.',
    },
    fixBelow: 'Some answers need your attention.',
    intro:
      'Your answers go to your care team before your visit. This is not for emergencies: if you need help now, call 911.',
    recordMedications: 'Medicines your record lists',
    recordAllergies: 'Allergies your record lists',
    recordNone: 'None listed',
    recordNote: 'If anything is missing or wrong, please say so in your answer.',
    doneTitle: 'Thank you',
    done: 'Your answers have been sent to your care team.',
    soon: 'Your care team may contact you before your visit.',
    urgentTitle: 'Please get help now',
    problemTitle: 'This link cannot be used',
    linkProblems: {
      forged: 'This link is not valid. Please use the link your clinic sent you, or contact your clinic.',
      expired: 'This link has expired. Please contact your clinic if you still want to send answers.',
      used: 'Answers have already been sent with this link. Thank you.',
      'visit-closed': 'This visit is no longer open for questions. Please contact your clinic.',
      unavailable: 'The questions cannot be shown right now. Please try again later.',
      'rate-limited': 'Too many attempts. Please wait a minute and try again.',
    },
    characters: (count) => `Up to ${count} characters.`,
  },
  es: {
    yes: 'Sí',
    no: 'No',
    next: 'Siguiente',
    send: 'Enviar mis respuestas',
    required: 'obligatoria',
    optional: 'opcional',
    problems: {
      required: 'Por favor, responda esta pregunta.',
      'too-long': 'Esta respuesta es demasiado larga. Por favor, acórtela.',
      invalid: 'Por favor, elija una de las respuestas ofrecidas.',
    },
    fixBelow: 'Algunas respuestas necesitan su atención.',
    intro:
      'Sus respuestas llegan a su equipo médico antes de su cita. No es para emergencias: si necesita ayuda ahora, llame al 911.',
    recordMedications: 'Medicamentos que figuran en su expediente',
    recordAllergies: 'Alergias que figuran en su expediente',
    recordNone: 'Ninguno',
    recordNote: 'Si falta algo o hay un error, indíquelo en su respuesta.',
    doneTitle: 'Gracias',
    done: 'Sus respuestas se enviaron a su equipo médico.',
    soon: 'Es posible que su equipo médico le contacte antes de su cita.',
    urgentTitle: 'Busque ayuda ahora',
    problemTitle: 'Este enlace no se puede usar',
    linkProblems: {
      forged: 'Este enlace no es válido. Use el enlace que le envió su clínica o comuníquese con ella.',
      expired: 'Este enlace ha caducado. Comuníquese con su clínica si aún desea enviar respuestas.',
      used: 'Ya se enviaron respuestas con este enlace. Gracias.',
      'visit-closed': 'Esta cita ya no acepta preguntas. Comuníquese con su clínica.',
      unavailable: 'Las preguntas no se pueden mostrar ahora. Inténtelo más tarde.',
      'rate-limited': 'Demasiados intentos. Espere un minuto e inténtelo de nuevo.',
    },
    characters: (count) => `Hasta ${count} caracteres.`,
  },
};

function wordsFor(language: string): Words {
  return words[language] ?? (words.en as Words);
}

function layout(language: string, title: string, body: string): string {
  return `<!doctype html>
<html lang="${escapeHtml(language)}">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="referrer" content="no-referrer">
<title>${escapeHtml(title)}</title>
<link rel="stylesheet" href="/intake-assets/intake.css">
</head>
<body>
<main>
${body}
</main>
</body>
</html>`;
}

function questionField(
  question: AskedQuestion,
  page: Extract<IntakePage, { kind: 'step' }>,
  text: Words,
): string {
  const id = `answer-${question.linkId}`;
  const problem = page.problems[question.linkId];
  const answer = page.answers[question.linkId];
  const describedBy = [
    problem ? `${id}-problem` : '',
    question.type === 'text' || question.type === 'string' ? `${id}-hint` : '',
  ]
    .filter(Boolean)
    .join(' ');
  const aria = `${describedBy ? ` aria-describedby="${describedBy}"` : ''}${problem ? ' aria-invalid="true"' : ''}${question.required ? ' aria-required="true"' : ''}`;
  const label = `${escapeHtml(question.text)} <span class="hint">(${question.required ? text.required : text.optional})</span>`;
  const problemLine = problem
    ? `<p class="problem" id="${id}-problem">${escapeHtml(text.problems[problem])}</p>`
    : '';
  if (question.type === 'boolean' || question.type === 'choice') {
    const options =
      question.type === 'boolean'
        ? [
            { code: 'yes', display: text.yes, checked: answer?.kind === 'boolean' && answer.value },
            { code: 'no', display: text.no, checked: answer?.kind === 'boolean' && !answer.value },
          ]
        : question.options.map((option) => ({
            code: option.code,
            display: option.display,
            checked: answer?.kind === 'coding' && answer.value.code === option.code,
          }));
    const radios = options
      .map(
        (option, index) =>
          `<label class="option" for="${id}-${index}"><input type="radio" id="${id}-${index}" name="${id}" value="${escapeHtml(option.code)}"${option.checked ? ' checked' : ''}${question.required && index === 0 ? ' required' : ''}> ${escapeHtml(option.display)}</label>`,
      )
      .join('\n');
    // A radiogroup may say it is required; a plain fieldset (role group) may not.
    return `<fieldset class="question${problem ? ' has-problem' : ''}" role="radiogroup"${aria}>
<legend>${label}</legend>
${problemLine}
${radios}
</fieldset>`;
  }
  const value = answer?.kind === 'string' || answer?.kind === 'integer' ? String(answer.value) : '';
  const hint = `<p class="hint" id="${id}-hint">${escapeHtml(text.characters(question.maxLength))}</p>`;
  const control =
    question.type === 'integer'
      ? `<input type="number" inputmode="numeric" id="${id}" name="${id}" value="${escapeHtml(value)}"${aria}${question.required ? ' required' : ''}>`
      : question.type === 'text'
        ? `<textarea id="${id}" name="${id}" rows="4" maxlength="${question.maxLength}"${aria}${question.required ? ' required' : ''}>${escapeHtml(value)}</textarea>`
        : `<input type="text" id="${id}" name="${id}" maxlength="${question.maxLength}" value="${escapeHtml(value)}"${aria}${question.required ? ' required' : ''}>`;
  return `<div class="question${problem ? ' has-problem' : ''}">
<label for="${id}">${label}</label>
${problemLine}
${control}
${question.type === 'integer' ? '' : hint}
</div>`;
}

function recordListsSection(page: Extract<IntakePage, { kind: 'step' }>, text: Words): string {
  if (!page.recordLists) return '';
  const list = (items: string[]) =>
    items.length > 0
      ? `<ul>${items.map((item) => `<li>${escapeHtml(item)}</li>`).join('')}</ul>`
      : `<p>${escapeHtml(text.recordNone)}</p>`;
  return `<section class="record-lists" aria-labelledby="record-lists-title">
<h2 id="record-lists-title">${escapeHtml(text.recordMedications)}</h2>
${list(page.recordLists.medications)}
<h2>${escapeHtml(text.recordAllergies)}</h2>
${list(page.recordLists.allergies)}
<p>${escapeHtml(text.recordNote)}</p>
</section>`;
}

export function renderIntakePage(
  page: IntakePage | { kind: 'rate-limited'; language: string },
  action: string,
): string {
  const text = wordsFor(page.language);
  switch (page.kind) {
    case 'rate-limited':
      return layout(
        page.language,
        text.problemTitle,
        `<h1>${escapeHtml(text.problemTitle)}</h1>
<p>${escapeHtml(text.linkProblems['rate-limited'])}</p>`,
      );
    case 'problem':
      return layout(
        page.language,
        text.problemTitle,
        `<h1>${escapeHtml(text.problemTitle)}</h1>
<p>${escapeHtml(text.linkProblems[page.problem])}</p>`,
      );
    case 'done':
      if (page.urgency === 'urgent')
        return layout(
          page.language,
          text.urgentTitle,
          `<div class="urgent" role="alert">
<h1>${escapeHtml(text.urgentTitle)}</h1>
<p>${escapeHtml(page.instruction ?? '')}</p>
</div>
<p>${escapeHtml(text.done)}</p>`,
        );
      return layout(
        page.language,
        text.doneTitle,
        `<h1>${escapeHtml(text.doneTitle)}</h1>
<p>${escapeHtml(text.done)}</p>
${page.urgency === 'soon' ? `<p>${escapeHtml(text.soon)}</p>` : ''}`,
      );
    case 'step': {
      const hasProblems = Object.keys(page.problems).length > 0;
      const fields = page.questions.map((question) => questionField(question, page, text)).join('\n');
      return layout(
        page.language,
        page.title,
        `<h1>${escapeHtml(page.title)}</h1>
${page.first ? `<p class="intro">${escapeHtml(text.intro)}</p>` : ''}
${hasProblems ? `<p class="problem" role="alert">${escapeHtml(text.fixBelow)}</p>` : ''}
${recordListsSection(page, text)}
<form method="post" action="${escapeHtml(action)}" novalidate>
<input type="hidden" name="state" value="${escapeHtml(page.state)}">
${fields}
<button type="submit">${escapeHtml(text.next)}</button>
</form>`,
      );
    }
  }
}
