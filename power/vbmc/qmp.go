package vbmc

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"time"
)

// qmp runs one QMP command on the QEMU monitor socket: connect, negotiate
// capabilities, execute, disconnect. A connection per command keeps the
// client free of background readers; QEMU answers in milliseconds.
func qmp(ctx context.Context, socket, command string, args any) (json.RawMessage, error) {
	var d net.Dialer
	conn, err := d.DialContext(ctx, "unix", socket)
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	deadline := time.Now().Add(10 * time.Second)
	if dl, ok := ctx.Deadline(); ok && dl.Before(deadline) {
		deadline = dl
	}
	conn.SetDeadline(deadline)
	stop := context.AfterFunc(ctx, func() { conn.SetDeadline(time.Unix(1, 0)) })
	defer stop()

	r := bufio.NewReader(conn)
	var greeting struct {
		QMP json.RawMessage `json:"QMP"`
	}
	if err := readQMP(r, &greeting); err != nil {
		return nil, fmt.Errorf("qmp greeting: %w", err)
	}
	if greeting.QMP == nil {
		return nil, errors.New("qmp: no greeting")
	}
	if _, err := qmpExecute(conn, r, "qmp_capabilities", nil); err != nil {
		return nil, err
	}
	return qmpExecute(conn, r, command, args)
}

type qmpReply struct {
	Return json.RawMessage `json:"return"`
	Error  *struct {
		Class string `json:"class"`
		Desc  string `json:"desc"`
	} `json:"error"`
	Event string `json:"event"`
}

func qmpExecute(w io.Writer, r *bufio.Reader, command string, args any) (json.RawMessage, error) {
	req := map[string]any{"execute": command}
	if args != nil {
		req["arguments"] = args
	}
	b, err := json.Marshal(req)
	if err != nil {
		return nil, err
	}
	if _, err := w.Write(append(b, '\n')); err != nil {
		return nil, fmt.Errorf("qmp %s: %w", command, err)
	}
	for {
		var rep qmpReply
		if err := readQMP(r, &rep); err != nil {
			return nil, fmt.Errorf("qmp %s: %w", command, err)
		}
		switch {
		case rep.Event != "":
			continue // asynchronous events are not answers
		case rep.Error != nil:
			return nil, fmt.Errorf("qmp %s: %s: %s", command, rep.Error.Class, rep.Error.Desc)
		case rep.Return != nil:
			return rep.Return, nil
		}
	}
}

func readQMP(r *bufio.Reader, v any) error {
	line, err := r.ReadBytes('\n')
	if err != nil {
		return err
	}
	return json.Unmarshal(line, v)
}
