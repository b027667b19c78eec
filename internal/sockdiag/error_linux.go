package sockdiag

// Error reports that sock_diag is missing or refused a request: What says
// which, Err is the system's answer.
type Error struct {
	What string
	Err  error
}

func (e *Error) Error() string { return e.What + " (" + e.Err.Error() + ")" }

// Unwrap returns the system's answer.
func (e *Error) Unwrap() error { return e.Err }
