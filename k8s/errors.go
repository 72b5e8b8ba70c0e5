package k8s

import "errors"

// ErrInvalidConfig reports an injector Config that fails validation.
var ErrInvalidConfig = errors.New("invalid injector config")

// ErrBadAnnotation reports a vatcar.io/* annotation or label whose value cannot
// be parsed, or that conflicts with the pod (an unknown port, a clash).
var ErrBadAnnotation = errors.New("bad vatcar annotation")

// AnnotationError is the ErrBadAnnotation of one annotation (or namespace
// label): Key names it, so that `vatcar check` can point at the field.
// errors.Is(err, ErrBadAnnotation) holds for it.
type AnnotationError struct {
	// Key is the annotation, e.g. "vatcar.io/exports", or "namespace label
	// vatcar.io/inject".
	Key string
	// Problem says what is wrong with its value.
	Problem string
}

func (e *AnnotationError) Error() string {
	return ErrBadAnnotation.Error() + ": " + e.Key + ": " + e.Problem
}

// Unwrap makes errors.Is(err, ErrBadAnnotation) true.
func (e *AnnotationError) Unwrap() error { return ErrBadAnnotation }

// ErrNoWorkload reports a pod whose workload name (which names its vat key
// Secret and its Service) cannot be found.
var ErrNoWorkload = errors.New("cannot tell the pod's workload")

// ErrConflict reports a pod that already uses a name or port the sidecar needs.
var ErrConflict = errors.New("pod conflicts with the sidecar")

// ErrBadManifest reports an input document that is not valid YAML or whose
// pod template cannot be decoded.
var ErrBadManifest = errors.New("bad manifest")

// ErrBadReview reports an AdmissionReview request the webhook cannot read.
var ErrBadReview = errors.New("bad admission review")
