! Two-scale Lorenz-96 dynamics: with h = 0 the slow system is the one-scale model (the coarse
! model with a zero closure, bitwise); RK4 is fourth order; the advection conserves energy.
module zero_closure
  use l96_dynamics, only: dp
  implicit none
contains
  subroutine no_closure(x, u, stat)
    real(dp), intent(in) :: x(:)
    real(dp), intent(out) :: u(:)
    integer, intent(out) :: stat
    u = 0
    stat = 0
  end subroutine no_closure
end module zero_closure

program test_l96_dynamics
  use l96_dynamics
  use zero_closure, only: no_closure
  implicit none
  type(l96_params_t) :: p
  real(dp), allocatable :: x(:), y(:), xc(:), x0(:), y0(:), u(:), dx(:), xr(:, :)
  real(dp) :: e(3), adv
  integer :: s, stat, i, r, nsteps
  integer :: failures = 0

  p = l96_params_t(k=8, j=32, f=20, h=0, b=10, c=10)
  allocate (x(p%k), y(p%j * p%k), u(p%k), dx(p%k))
  x = [(sin(0.7_dp * i) * 3 + 1, i = 1, p%k)]
  y = [(0.1_dp * cos(0.3_dp * i), i = 1, p%j * p%k)]
  xc = x
  do s = 1, 200
    call truth_step(p, 0.001_dp, x, y)
    call coarse_step(p, 0.001_dp, xc, no_closure, stat)
  end do
  call check(all(x == xc), 'h = 0: the slow truth equals the one-scale model bitwise')

  ! RK4 order on the full two-scale system: errors at t = 0.1 against a dt/16 reference
  p%h = 1
  x0 = [(sin(0.7_dp * i) * 3 + 1, i = 1, p%k)]
  y0 = [(0.5_dp * cos(0.3_dp * i), i = 1, p%j * p%k)]
  allocate (xr(p%k, 4))
  do r = 1, 4
    x = x0
    y = y0
    nsteps = 50 * 2**(r - 1)
    if (r == 4) nsteps = 50 * 16
    do s = 1, nsteps
      call truth_step(p, 0.1_dp / nsteps, x, y)
    end do
    xr(:, r) = x
  end do
  do r = 1, 3
    e(r) = maxval(abs(xr(:, r) - xr(:, 4)))
  end do
  print '(a,3es10.2,a,2f6.2)', 'RK4 errors dt, dt/2, dt/4:', e, '  ratios', e(1) / e(2), e(2) / e(3)
  call check(e(1) / e(2) > 12 .and. e(1) / e(2) < 20 .and. e(2) / e(3) > 12, &
             'RK4: halving dt divides the error by about 16')

  ! energy: the advection term -X_{k-1}(X_{k-2} - X_{k+1}) does no work (sum X_k adv_k = 0)
  u = x0     ! with F = 0, cancels the damping -X_k: dx = adv
  call slow_tendency(0.0_dp, [x0(p%k - 1:p%k), x0, x0(1:1)], u, dx)
  adv = sum(x0 * dx)
  call check(abs(adv) < 1e-12_dp * sum(x0**2), 'advection conserves energy')

  ! what the host does on each MPI rank: the ring in two blocks, each with its halos from the
  ! other, stepped by the same kernels, gives the whole-ring step bitwise
  x = x0
  y = y0
  call truth_step(p, 0.001_dp, x, y)
  call check(all(block_step(x0, y0, 0.001_dp) == [x, y]), &
             'two blocks with halos step as the whole ring, bitwise')

  if (failures > 0) error stop 1
  print '(a)', 'test_l96_dynamics: all passed'

contains

  !> One truth step of the ring as two blocks of K/2 slow variables (the host's loop on two
  !> ranks, the halo exchange done by copying): the stepped [x, y].
  function block_step(x_ring, y_ring, dt) result(xy)
    real(dp), intent(in) :: x_ring(:), y_ring(:), dt
    real(dp) :: xy(size(x_ring) + size(y_ring))
    integer, parameter :: NB = 2
    integer :: n, nf, b, stage
    real(dp), allocatable :: xb(:, :), xsb(:, :), yb(:, :), ysb(:, :), kx(:, :, :), ky(:, :, :), ub(:)
    n = p%k / NB
    nf = p%j * n
    allocate (xb(-1:n + 1, NB), xsb(-1:n + 1, NB), yb(0:nf + 2, NB), ysb(0:nf + 2, NB), &
              kx(n, RK4_STAGES, NB), ky(nf, RK4_STAGES, NB), ub(n))
    do b = 1, NB
      xb(1:n, b) = x_ring((b - 1) * n + 1:b * n)
      yb(1:nf, b) = y_ring((b - 1) * nf + 1:b * nf)
    end do
    do stage = 1, RK4_STAGES
      if (stage == 1) then
        call exchange(xb, yb, n, nf)
      else
        call exchange(xsb, ysb, n, nf)
      end if
      do b = 1, NB
        if (stage == 1) then
          call truth_tendencies(p, xb(:, b), yb(:, b), ub, kx(:, stage, b), ky(:, stage, b))
        else
          call truth_tendencies(p, xsb(:, b), ysb(:, b), ub, kx(:, stage, b), ky(:, stage, b))
        end if
        call rk4_update(stage, dt, xb(1:n, b), kx(:, :, b), xsb(1:n, b))
        call rk4_update(stage, dt, yb(1:nf, b), ky(:, :, b), ysb(1:nf, b))
      end do
    end do
    xy = [xb(1:n, 1), xb(1:n, 2), yb(1:nf, 1), yb(1:nf, 2)]
  end function block_step

  !> The blocks' halos from their neighbours on the ring (MPI's halo exchange).
  subroutine exchange(xx, yy, n, nf)
    real(dp), intent(inout) :: xx(-1:, :), yy(0:, :)   !! (halo + block, blocks)
    integer, intent(in) :: n, nf                       !! slow and fast variables per block
    integer :: b, left, right, nb
    nb = size(xx, 2)
    do b = 1, nb
      left = modulo(b - 2, nb) + 1
      right = modulo(b, nb) + 1
      xx(-1:0, b) = xx(n - 1:n, left)
      xx(n + 1, b) = xx(1, right)
      yy(0, b) = yy(nf, left)
      yy(nf + 1:nf + 2, b) = yy(1:2, right)
    end do
  end subroutine exchange

  subroutine check(ok, what)
    logical, intent(in) :: ok
    character(len=*), intent(in) :: what
    if (.not. ok) then
      print '(a)', 'FAIL: '//what
      failures = failures + 1
    end if
  end subroutine check
end program test_l96_dynamics
