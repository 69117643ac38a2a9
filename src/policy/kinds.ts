// The kinds of policy documents and the names a command line may give them: apart from the
// schemas (zod, yaml), so that the CLI can name them without loading those.

export const KINDS = ['StorageUnit', 'Lifecycle', 'Policy', 'Client'] as const;
export type Kind = (typeof KINDS)[number];

const KIND_NAMES: Record<string, Kind> = {
  storageunit: 'StorageUnit', storageunits: 'StorageUnit', su: 'StorageUnit',
  lifecycle: 'Lifecycle', lifecycles: 'Lifecycle', slp: 'Lifecycle',
  policy: 'Policy', policies: 'Policy',
  client: 'Client', clients: 'Client',
};

/** The kind a command line names (`policies`, `policy`, `Policy`, `storageunits`, `su`, `slp`, ...). */
export function kindFromName(name: string): Kind | undefined {
  return KIND_NAMES[name.toLowerCase().replace(/[-_]/g, '')];
}
