package etcd

import (
	"context"
	"errors"
	"fmt"
	"sort"

	"github.com/kilnhq/kiln/inventory/keys"
	"go.etcd.io/etcd/api/v3/authpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// Role and user names created by InitRoles. Each role has a user of the
// same name; with client-certificate auth, a client certificate whose CN
// is that name authenticates as that user.
const (
	RegionUser = "kiln-region"
	ViewerUser = "kiln-viewer"
	RootUser   = "root"
)

// RackUser is the user and role of one rack's agents.
func RackUser(rack string) string { return "kiln-rack-" + rack }

// RolesConfig says which roles and users InitRoles creates.
type RolesConfig struct {
	Layout keys.Layout
	Racks  []string
	// Passwords holds the password of each user that has one; a user
	// without one authenticates by client certificate only. A password
	// given for an existing user replaces its password.
	Passwords map[string]string
	// EnableAuth turns etcd's authentication on once roles exist.
	EnableAuth bool
}

// InitRoles creates, or brings up to date, the etcd roles and users of
// the region, each rack and the viewer, and the root user, then enables
// auth if asked. It is idempotent: a second run changes nothing. Each
// change is reported to did (never a password).
func InitRoles(ctx context.Context, cli *clientv3.Client, cfg RolesConfig, did func(string)) error {
	roles := map[string][]keys.Grant{
		RegionUser: cfg.Layout.RegionGrants(),
		ViewerUser: cfg.Layout.ViewerGrants(),
	}
	for _, r := range cfg.Racks {
		if r == "" {
			return errors.New("init roles: empty rack name")
		}
		roles[RackUser(r)] = cfg.Layout.RackGrants(r)
	}
	names := make([]string, 0, len(roles))
	for n := range roles {
		names = append(names, n)
	}
	sort.Strings(names)
	if err := ensureRole(ctx, cli, RootUser, nil, did); err != nil {
		return err
	}
	if err := ensureUser(ctx, cli, RootUser, cfg.Passwords, did); err != nil {
		return err
	}
	for _, n := range names {
		if err := ensureRole(ctx, cli, n, roles[n], did); err != nil {
			return err
		}
		if err := ensureUser(ctx, cli, n, cfg.Passwords, did); err != nil {
			return err
		}
	}
	if !cfg.EnableAuth {
		return nil
	}
	st, err := cli.AuthStatus(ctx)
	if err != nil {
		return fmt.Errorf("auth status: %w", err)
	}
	if st.Enabled {
		return nil
	}
	if _, err := cli.AuthEnable(ctx); err != nil {
		return fmt.Errorf("enable auth: %w", err)
	}
	did("enabled authentication")
	return nil
}

// ensureRole creates a role and makes its permissions exactly grants
// (root's are built in, so grants is nil for it).
func ensureRole(ctx context.Context, cli *clientv3.Client, role string, grants []keys.Grant, did func(string)) error {
	resp, err := cli.RoleGet(ctx, role)
	switch {
	case errors.Is(err, rpctypes.ErrRoleNotFound):
		if _, err := cli.RoleAdd(ctx, role); err != nil {
			return fmt.Errorf("add role %s: %w", role, err)
		}
		did("created role " + role)
		resp = &clientv3.AuthRoleGetResponse{}
	case err != nil:
		return fmt.Errorf("read role %s: %w", role, err)
	}
	if role == RootUser {
		return nil
	}
	type perm struct {
		key, end string
		typ      authpb.Permission_Type
	}
	want := map[perm]bool{}
	for _, g := range grants {
		typ := authpb.READ
		if g.Write {
			typ = authpb.READWRITE
		}
		want[perm{g.Prefix, clientv3.GetPrefixRangeEnd(g.Prefix), typ}] = true
	}
	for _, p := range resp.Perm {
		have := perm{string(p.Key), string(p.RangeEnd), p.PermType}
		if want[have] {
			delete(want, have)
			continue
		}
		if _, err := cli.RoleRevokePermission(ctx, role, have.key, have.end); err != nil {
			return fmt.Errorf("role %s: revoke %s: %w", role, have.key, err)
		}
		did(fmt.Sprintf("role %s: revoked %s on %s", role, have.typ, have.key))
	}
	// Grant in a stable order so the report reads the same each time.
	var missing []perm
	for p := range want {
		missing = append(missing, p)
	}
	sort.Slice(missing, func(i, j int) bool { return missing[i].key < missing[j].key })
	for _, p := range missing {
		if _, err := cli.RoleGrantPermission(ctx, role, p.key, p.end, clientv3.PermissionType(p.typ)); err != nil {
			return fmt.Errorf("role %s: grant %s: %w", role, p.key, err)
		}
		did(fmt.Sprintf("role %s: granted %s on prefix %s", role, p.typ, p.key))
	}
	return nil
}

// ensureUser creates a user named like its role and grants it the role.
func ensureUser(ctx context.Context, cli *clientv3.Client, user string, passwords map[string]string, did func(string)) error {
	pw, hasPW := passwords[user]
	resp, err := cli.UserGet(ctx, user)
	switch {
	case errors.Is(err, rpctypes.ErrUserNotFound):
		if _, err := cli.UserAddWithOptions(ctx, user, pw, &clientv3.UserAddOptions{NoPassword: !hasPW}); err != nil {
			return fmt.Errorf("add user %s: %w", user, err)
		}
		if hasPW {
			did("created user " + user + " (password)")
		} else {
			did("created user " + user + " (client certificate only)")
		}
		resp = &clientv3.AuthUserGetResponse{}
	case err != nil:
		return fmt.Errorf("read user %s: %w", user, err)
	case hasPW:
		if _, err := cli.UserChangePassword(ctx, user, pw); err != nil {
			return fmt.Errorf("set password of %s: %w", user, err)
		}
		did("set password of user " + user)
	}
	for _, r := range resp.Roles {
		if r == user {
			return nil
		}
	}
	if _, err := cli.UserGrantRole(ctx, user, user); err != nil {
		return fmt.Errorf("grant role %s to user %s: %w", user, user, err)
	}
	did("granted role " + user + " to user " + user)
	return nil
}
