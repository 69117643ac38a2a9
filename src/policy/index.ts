// The policies-as-code layer as the server, the scheduler and the CLI use it: documents
// (schemas, reading with file:line:col problems, canonical export), references between them,
// diffs, table rows, durations, windows and calendars. Import from here, not from the files.

export {
  API_VERSION, KINDS, DEFAULTS, OPERATIONS, LEVELS, MISSED,
  documentSchema, DOCUMENT_SCHEMAS, storageUnitDocument, lifecycleDocument, policyDocument, clientDocument,
  kindFromName, documentId,
  type Kind, type CofferDocument, type DocumentOfKind, type StorageUnitDocument, type LifecycleDocument,
  type PolicyDocument, type ClientDocument, type Metadata, type Copy, type Selection, type Schedule, type Hook, type RestoreTests,
} from './schemas.ts';
export { scratchPathProblem, DEFAULT_SCRATCH_PATH } from './scratch-path.ts';
export {
  parseDocuments, readDocuments, loadDocuments, normalize, toYaml, toJson, DOCUMENT_EXTENSIONS,
  type SourcedDocument, type ParseOptions, type LoadOptions, type ReadResult, type Position, type ReferenceCheckOptions,
} from './documents.ts';
export { checkDocument, type CheckedDocument, type DocumentProblem } from './validate.ts';
export { invalidDocuments, formatProblem, formatPath, sortProblems, type Problem, type PathSegment } from './problems.ts';
export { validateReferences, knownFrom, checkScheduleWindow, type KnownLookup, type ReferenceResult, type ReferenceOptions } from './references.ts';
export { diffDocuments, hasChanges, formatChanges, summarizeChanges, fieldChanges, unifiedDiff, type DocumentChange, type FieldChange, type DiffOptions } from './diff.ts';
export { tableColumns, tableRow, policyWideRow, type TableOptions } from './table.ts';
export {
  checkDuration, parseDuration, formatDuration, checkTimeOfDay, formatTimeOfDay, parseWindow, formatWindow,
  DURATION_UNITS, INFINITE, MAX_WINDOW_MS, type DurationOptions, type DurationResult, type Window, type WindowSpec,
} from './durations.ts';
export { CRON_OPTIONS, MIN_CALENDAR_INTERVAL_MS, checkCalendar, checkTimezone, longestGap, type ScheduleTiming } from './calendar.ts';
export { didYouMean } from './did-you-mean.ts';
export { checkSize, checkPercent, SIZE_UNITS, type SizeResult, type FractionResult } from './sizes.ts';
