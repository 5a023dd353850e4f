// Package shim exposes the provider constructor, which lives in an internal package of the
// Terraform random provider; a package under that module's path may import it.
package shim

import (
	tfpf "github.com/hashicorp/terraform-plugin-framework/provider"
	"github.com/terraform-providers/terraform-provider-random/internal/provider"
)

// NewProvider returns the plugin-framework provider.
func NewProvider() tfpf.Provider { return provider.New() }
