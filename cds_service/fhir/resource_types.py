"""The FHIR resource type names a decoder recognises (fhir/decode.py): FHIR R4's resource
list, with those that R4B and R5 added, so that a server a version ahead decodes too.

Read from the resource classes of the `fhir.resources` package (R4B and R5 modules) and the
R4 list of resources (hl7.org/fhir/R4/resourcelist.html) for those R4B dropped. A type missing
here is not refused: a body that holds one is parsed by the generic JSON parser instead
(fhir/decode.py), only more slowly.
"""

RESOURCE_TYPES = frozenset(
    {
        "Account", "ActivityDefinition", "ActorDefinition", "AdministrableProductDefinition",
        "AdverseEvent", "AllergyIntolerance", "Appointment", "AppointmentResponse",
        "ArtifactAssessment", "AuditEvent", "Basic", "Binary", "BiologicallyDerivedProduct",
        "BiologicallyDerivedProductDispense", "BodyStructure", "Bundle", "CapabilityStatement",
        "CarePlan", "CareTeam", "CatalogEntry", "ChargeItem", "ChargeItemDefinition", "Citation",
        "Claim", "ClaimResponse", "ClinicalImpression", "ClinicalUseDefinition", "CodeSystem",
        "Communication", "CommunicationRequest", "CompartmentDefinition", "Composition",
        "ConceptMap", "Condition", "ConditionDefinition", "Consent", "Contract", "Coverage",
        "CoverageEligibilityRequest", "CoverageEligibilityResponse", "DetectedIssue", "Device",
        "DeviceAssociation", "DeviceDefinition", "DeviceDispense", "DeviceMetric", "DeviceRequest",
        "DeviceUsage", "DeviceUseStatement", "DiagnosticReport", "DocumentManifest",
        "DocumentReference", "EffectEvidenceSynthesis", "Encounter", "EncounterHistory", "Endpoint",
        "EnrollmentRequest", "EnrollmentResponse", "EpisodeOfCare", "EventDefinition", "Evidence",
        "EvidenceReport", "EvidenceVariable", "ExampleScenario", "ExplanationOfBenefit",
        "FamilyMemberHistory", "Flag", "FormularyItem", "GenomicStudy", "Goal", "GraphDefinition",
        "Group", "GuidanceResponse", "HealthcareService", "ImagingSelection", "ImagingStudy",
        "Immunization", "ImmunizationEvaluation", "ImmunizationRecommendation",
        "ImplementationGuide", "Ingredient", "InsurancePlan", "InventoryItem", "InventoryReport",
        "Invoice", "Library", "Linkage", "List", "Location", "ManufacturedItemDefinition", "Measure",
        "MeasureReport", "Media", "Medication", "MedicationAdministration", "MedicationDispense",
        "MedicationKnowledge", "MedicationRequest", "MedicationStatement", "MedicinalProduct",
        "MedicinalProductAuthorization", "MedicinalProductContraindication",
        "MedicinalProductDefinition", "MedicinalProductIndication", "MedicinalProductIngredient",
        "MedicinalProductInteraction", "MedicinalProductManufactured", "MedicinalProductPackaged",
        "MedicinalProductPharmaceutical", "MedicinalProductUndesirableEffect", "MessageDefinition",
        "MessageHeader", "MolecularSequence", "NamingSystem", "NutritionIntake", "NutritionOrder",
        "NutritionProduct", "Observation", "ObservationDefinition", "OperationDefinition",
        "OperationOutcome", "Organization", "OrganizationAffiliation", "PackagedProductDefinition",
        "Parameters", "Patient", "PaymentNotice", "PaymentReconciliation", "Permission", "Person",
        "PlanDefinition", "Practitioner", "PractitionerRole", "Procedure", "Provenance",
        "Questionnaire", "QuestionnaireResponse", "RegulatedAuthorization", "RelatedPerson",
        "RequestGroup", "RequestOrchestration", "Requirements", "ResearchDefinition",
        "ResearchElementDefinition", "ResearchStudy", "ResearchSubject", "RiskAssessment",
        "RiskEvidenceSynthesis", "Schedule", "SearchParameter", "ServiceRequest", "Slot", "Specimen",
        "SpecimenDefinition", "StructureDefinition", "StructureMap", "Subscription",
        "SubscriptionStatus", "SubscriptionTopic", "Substance", "SubstanceDefinition",
        "SubstanceNucleicAcid", "SubstancePolymer", "SubstanceProtein",
        "SubstanceReferenceInformation", "SubstanceSourceMaterial", "SubstanceSpecification",
        "SupplyDelivery", "SupplyRequest", "Task", "TerminologyCapabilities", "TestPlan",
        "TestReport", "TestScript", "Transport", "ValueSet", "VerificationResult",
        "VisionPrescription",
    }
)  # fmt: skip
