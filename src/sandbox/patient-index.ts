import { evalFhirPath, getSearchParameter } from '@medplum/core';
import type { Resource } from '@medplum/fhirtypes';

/**
 * Which stored resources belong to which patient (by each type's own `patient` search parameter),
 * kept up to date on every write. Medplum's memory search scans every resource of a type; with a
 * thousand patients that made one patient's history take most of a second, while the index answers
 * `?patient=Patient/x` from that patient's few hundred resources.
 */
export class PatientIndex {
  private readonly byPatient = new Map<string, Map<string, Set<string>>>();
  private readonly patientsOf = new Map<string, string[]>();

  /** True when searches of this type by `patient` can use the index. */
  covers(resourceType: string): boolean {
    return Boolean(getSearchParameter(resourceType, 'patient')?.expression);
  }

  add(resource: Resource): void {
    const key = `${resource.resourceType}/${resource.id}`;
    const expression = getSearchParameter(resource.resourceType, 'patient')?.expression;
    const patients = new Set<string>();
    for (const value of expression ? evalFhirPath(expression, resource) : []) {
      const reference = (value as { reference?: unknown } | undefined)?.reference;
      if (typeof reference === 'string' && reference.startsWith('Patient/')) patients.add(reference);
    }
    // An update keeps its place in the patient's list (the memory search keeps insertion order too).
    for (const previous of this.patientsOf.get(key) ?? []) {
      if (!patients.has(previous))
        this.byPatient
          .get(previous)
          ?.get(resource.resourceType)
          ?.delete(resource.id as string);
    }
    if (patients.size === 0) {
      this.patientsOf.delete(key);
      return;
    }
    this.patientsOf.set(key, [...patients]);
    for (const patient of patients) {
      let types = this.byPatient.get(patient);
      if (!types) {
        types = new Map();
        this.byPatient.set(patient, types);
      }
      let ids = types.get(resource.resourceType);
      if (!ids) {
        ids = new Set();
        types.set(resource.resourceType, ids);
      }
      ids.add(resource.id as string);
    }
  }

  remove(resourceType: string, id: string): void {
    const key = `${resourceType}/${id}`;
    for (const patient of this.patientsOf.get(key) ?? [])
      this.byPatient.get(patient)?.get(resourceType)?.delete(id);
    this.patientsOf.delete(key);
  }

  /** Ids of the type's resources that reference the patient, in insertion order. */
  ids(patientReference: string, resourceType: string): string[] {
    return [...(this.byPatient.get(patientReference)?.get(resourceType) ?? [])];
  }

  clear(): void {
    this.byPatient.clear();
    this.patientsOf.clear();
  }
}
