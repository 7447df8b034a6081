package main

import (
	"errors"
	"time"
)

var errScheduleTimeout = errors.New("pool: schedule timed out")

// pool is the article's goroutine pool in its unbuffered form: a task goes straight to an idle
// worker, or starts a new one while fewer than size run; otherwise Schedule waits, and that wait
// is the back-pressure on epoll and accept. (A buffered work queue could strand a task with no
// worker to take it.)
type pool struct {
	sem  chan struct{}
	work chan func()
}

func newPool(size int) *pool {
	return &pool{sem: make(chan struct{}, size), work: make(chan func())}
}

func (p *pool) Schedule(task func()) { _ = p.schedule(task, nil) }

func (p *pool) ScheduleTimeout(timeout time.Duration, task func()) error {
	timer := time.NewTimer(timeout)
	defer timer.Stop()
	return p.schedule(task, timer.C)
}

func (p *pool) schedule(task func(), timeout <-chan time.Time) error {
	select {
	case p.work <- task:
		return nil
	case p.sem <- struct{}{}:
		go p.worker(task)
		return nil
	case <-timeout:
		return errScheduleTimeout
	}
}

func (p *pool) worker(task func()) {
	defer func() { <-p.sem }()
	for {
		task()
		task = <-p.work
	}
}
