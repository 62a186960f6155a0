package inventory

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"path"
	"path/filepath"
	"strings"
	"testing/fstest" // an in-memory fs.FS for a commit's tree; nothing of testing itself
	"time"

	"github.com/go-git/go-git/v5"
	"github.com/go-git/go-git/v5/config"
	"github.com/go-git/go-git/v5/plumbing"
	"github.com/go-git/go-git/v5/plumbing/filemode"
	"github.com/go-git/go-git/v5/plumbing/object"
	githttp "github.com/go-git/go-git/v5/plumbing/transport/http"
	"github.com/kilnhq/kiln/spec"
)

// Git is a source that follows one branch of a git repository: a local
// repository is read in place, a remote one is fetched into a bare cache.
type Git struct {
	Name     string
	URL      string        // local path or URL
	Branch   string        // default main
	Path     string        // folder inside the repository, default the root
	Interval time.Duration // poll interval, default 30s
	CacheDir string        // where remote repositories are fetched
	Log      *slog.Logger
	// Username and Password authenticate HTTP(S) fetches (a token works
	// as the password). They come from the environment, never the repo.
	Username, Password string

	trigger chan struct{}
}

// NewGit returns a git source; set the optional fields before Run.
func NewGit(name, url, branch string, log *slog.Logger) *Git {
	if branch == "" {
		branch = "main"
	}
	return &Git{Name: name, URL: url, Branch: branch, Log: log, Interval: 30 * time.Second, trigger: make(chan struct{}, 1)}
}

// Info describes the source.
func (g *Git) Info() SourceInfo {
	loc := g.URL
	if g.Path != "" {
		loc += "//" + g.Path
	}
	return SourceInfo{Name: g.Name, Type: "git", Location: loc, Branch: g.Branch}
}

// Sync asks for a pull now instead of at the next poll.
func (g *Git) Sync() {
	select {
	case g.trigger <- struct{}{}:
	default:
	}
}

// Run polls the branch and calls sink for each new commit.
func (g *Git) Run(ctx context.Context, sink func(context.Context, Revision)) error {
	ticker := time.NewTicker(g.Interval)
	defer ticker.Stop()
	var last string
	for {
		id, tree, note, err := g.poll(ctx, last)
		switch {
		case ctx.Err() != nil:
			return nil
		case err != nil:
			sink(ctx, Revision{Err: err})
		case id != last:
			sink(ctx, Revision{ID: id, FS: tree, Note: note})
			last = id
		}
		select {
		case <-ctx.Done():
			return nil
		case <-ticker.C:
		case <-g.trigger:
		}
	}
}

// local reports whether URL is a plain path, read in place. Anything with
// a scheme (file:// included) is fetched into the cache.
func (g *Git) local() bool {
	if strings.Contains(g.URL, "://") {
		return false
	}
	fi, err := os.Stat(g.URL)
	return err == nil && fi.IsDir()
}

// poll returns the branch's commit and, when it differs from last, its tree.
func (g *Git) poll(ctx context.Context, last string) (string, fs.FS, string, error) {
	var repo *git.Repository
	var ref plumbing.ReferenceName
	var err error
	if g.local() {
		repo, err = git.PlainOpen(g.URL)
		if err != nil {
			return "", nil, "", fmt.Errorf("open repository %s: %w", g.URL, err)
		}
		ref = plumbing.NewBranchReferenceName(g.Branch)
	} else {
		repo, err = g.fetch(ctx)
		if err != nil {
			return "", nil, "", err
		}
		ref = plumbing.NewRemoteReferenceName("origin", g.Branch)
	}
	r, err := repo.Reference(ref, true)
	if err != nil {
		return "", nil, "", fmt.Errorf("branch %q of %s: %w", g.Branch, g.URL, err)
	}
	id := r.Hash().String()
	if id == last {
		return id, nil, "", nil
	}
	commit, err := repo.CommitObject(r.Hash())
	if err != nil {
		return "", nil, "", fmt.Errorf("commit %s: %w", id, err)
	}
	note := "commit " + id[:12] + ": " + firstLine(commit.Message)
	if last != "" {
		if prev, err := repo.CommitObject(plumbing.NewHash(last)); err == nil {
			if ok, err := prev.IsAncestor(commit); err == nil && !ok {
				note = fmt.Sprintf("branch history was rewritten (force push?): %s is not an ancestor of %s; %s", last[:12], id[:12], note)
				g.Log.Warn("branch history rewritten", "from", last, "to", id)
			}
		}
	}
	tree, err := g.treeFS(commit)
	if err != nil {
		return "", nil, "", fmt.Errorf("read tree of %s: %w", id, err)
	}
	return id, tree, note, nil
}

// fetch brings the branch of a remote repository into the bare cache. The
// refspec is forced, so a force-pushed branch is followed.
func (g *Git) fetch(ctx context.Context) (*git.Repository, error) {
	if g.CacheDir == "" {
		return nil, errors.New("git source: no cache dir for remote repositories")
	}
	sum := sha256.Sum256([]byte(g.URL))
	dir := filepath.Join(g.CacheDir, hex.EncodeToString(sum[:8])+".git")
	repo, err := git.PlainOpen(dir)
	if errors.Is(err, git.ErrRepositoryNotExists) {
		if repo, err = git.PlainInit(dir, true); err == nil {
			_, err = repo.CreateRemote(&config.RemoteConfig{Name: "origin", URLs: []string{g.URL}})
		}
	}
	if err != nil {
		return nil, fmt.Errorf("git cache %s: %w", dir, err)
	}
	spec := config.RefSpec(fmt.Sprintf("+refs/heads/%s:refs/remotes/origin/%s", g.Branch, g.Branch))
	opts := &git.FetchOptions{RemoteName: "origin", RefSpecs: []config.RefSpec{spec}, Force: true, Tags: git.NoTags}
	if g.Username != "" || g.Password != "" {
		opts.Auth = &githttp.BasicAuth{Username: g.Username, Password: g.Password}
	}
	fctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	if err := repo.FetchContext(fctx, opts); err != nil && !errors.Is(err, git.NoErrAlreadyUpToDate) {
		return nil, fmt.Errorf("fetch %s branch %s: %w", g.URL, g.Branch, err)
	}
	return repo, nil
}

// treeFS returns the files below g.Path in the commit as an fs.FS.
func (g *Git) treeFS(c *object.Commit) (fs.FS, error) {
	tree, err := c.Tree()
	if err != nil {
		return nil, err
	}
	sub := strings.Trim(path.Clean("/"+g.Path), "/")
	if sub != "" {
		if tree, err = tree.Tree(sub); err != nil {
			return nil, fmt.Errorf("folder %q: %w", g.Path, err)
		}
	}
	out := fstest.MapFS{}
	err = tree.Files().ForEach(func(f *object.File) error {
		if f.Mode == filemode.Symlink {
			out[f.Name] = &fstest.MapFile{Mode: fs.ModeSymlink}
			return nil
		}
		if f.Size > 1<<20 && !strings.HasSuffix(f.Name, ".yaml") && !strings.HasSuffix(f.Name, ".yml") {
			return nil // neither a document nor a user-data file: not read
		}
		r, err := f.Reader()
		if err != nil {
			return err
		}
		defer r.Close()
		// Read one byte past the loader's limit so it can say "too large".
		data, err := io.ReadAll(io.LimitReader(r, spec.DefaultMaxFileSize+1))
		if err != nil {
			return err
		}
		out[f.Name] = &fstest.MapFile{Data: data, Mode: 0o644}
		return nil
	})
	return out, err
}

func firstLine(s string) string {
	s, _, _ = strings.Cut(strings.TrimSpace(s), "\n")
	return s
}
