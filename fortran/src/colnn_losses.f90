!> Losses: Keras' reductions (mean over the features of a sample, then over the minibatch), and
!> an abstract type a user extends for a loss of their own (value and dL/dy).
module colnn_losses
  use colnn_kinds, only: wp, dp
  use colnn_status
  use colnn_strings, only: next_token, parse_real_dp
  implicit none
  private

  public :: loss_t, builtin_loss_t, parse_loss

  !> A loss: `evaluate` returns the minibatch loss and dy = dL/dy for outputs y(n_out, nc) and
  !> targets t(n_targets(n_out), nc).
  type, abstract :: loss_t
  contains
    procedure(evaluate_iface), deferred :: evaluate
    procedure :: n_targets => loss_n_targets
    procedure :: is_categorical_crossentropy => loss_is_cce
  end type loss_t

  abstract interface
    subroutine evaluate_iface(self, y, t, value, dy)
      import :: loss_t, wp
      class(loss_t), intent(in) :: self
      real(wp), intent(in) :: y(:, :), t(:, :)
      real(wp), intent(out) :: value
      real(wp), intent(out) :: dy(:, :)
    end subroutine evaluate_iface
  end interface

  integer, parameter :: L_MSE = 1, L_MAE = 2, L_HUBER = 3, L_CCE = 4, L_GNLL = 5

  type, extends(loss_t) :: builtin_loss_t
    integer :: kind = L_MSE
    real(wp) :: delta = 1      !< huber
  contains
    procedure :: evaluate => builtin_evaluate
    procedure :: n_targets => builtin_n_targets
  end type builtin_loss_t

contains

  pure logical function loss_is_cce(self)
    class(loss_t), intent(in) :: self
    select type (self)
    type is (builtin_loss_t)
      loss_is_cce = self%kind == L_CCE
    class default
      loss_is_cce = .false.
    end select
  end function loss_is_cce

  pure integer function loss_n_targets(self, n_out)
    class(loss_t), intent(in) :: self
    integer, intent(in) :: n_out
    loss_n_targets = n_out
  end function loss_n_targets

  !> Gaussian negative log-likelihood: the network predicts (mean, log variance) pairs.
  pure integer function builtin_n_targets(self, n_out)
    class(builtin_loss_t), intent(in) :: self
    integer, intent(in) :: n_out
    builtin_n_targets = n_out
    if (self%kind == L_GNLL) then
      builtin_n_targets = n_out / 2
      if (mod(n_out, 2) /= 0) builtin_n_targets = -1   ! needs (mean, log variance) pairs
    end if
  end function builtin_n_targets

  subroutine parse_loss(text, loss, stat, errmsg)
    character(len=*), intent(in) :: text
    type(builtin_loss_t), intent(out) :: loss
    integer, intent(out) :: stat
    character(len=:), allocatable, intent(out) :: errmsg
    integer :: pos, first, last
    character(len=:), allocatable :: name, tok
    real(dp) :: r
    logical :: ok
    stat = COLNN_OK
    errmsg = ''
    pos = 1
    call next_token(text, pos, first, last)
    name = text(first:max(first - 1, last))
    select case (name)
    case ('mse', 'mean_squared_error'); loss%kind = L_MSE
    case ('mae', 'mean_absolute_error'); loss%kind = L_MAE
    case ('huber'); loss%kind = L_HUBER
    case ('categorical_crossentropy'); loss%kind = L_CCE
    case ('gaussian_nll'); loss%kind = L_GNLL
    case default
      stat = COLNN_ERR_UNSUPPORTED
      errmsg = "unknown loss '"//name//"' (mse, mae, huber, categorical_crossentropy, gaussian_nll)"
      return
    end select
    call next_token(text, pos, first, last)
    if (last >= first) then
      tok = text(first:last)
      ok = loss%kind == L_HUBER .and. tok(1:min(6, len(tok))) == 'delta='
      if (ok) then
        call parse_real_dp(tok(7:), r, ok)
        if (ok) ok = r > 0
        loss%delta = real(r, wp)
      end if
      if (.not. ok) then
        stat = COLNN_ERR_ARGUMENT
        errmsg = "loss '"//name//"': bad parameter '"//tok//"'"
      end if
    end if
  end subroutine parse_loss

  subroutine builtin_evaluate(self, y, t, value, dy)
    class(builtin_loss_t), intent(in) :: self
    real(wp), intent(in) :: y(:, :), t(:, :)
    real(wp), intent(out) :: value
    real(wp), intent(out) :: dy(:, :)
    real(wp), parameter :: EPS = 1e-7_wp
    real(wp) :: scale, e, s, yc
    real(dp) :: acc
    integer :: i, j, n, nc, k
    n = size(y, 1)
    nc = size(y, 2)
    scale = 1 / (real(n, wp) * nc)
    acc = 0
    select case (self%kind)
    case (L_MSE)
      dy = y - t
      acc = sum(real(dy, dp)**2)
      dy = 2 * scale * dy
    case (L_MAE)
      acc = sum(abs(real(y - t, dp)))
      dy = scale * sign(1.0_wp, y - t)
      where (y == t) dy = 0
    case (L_HUBER)
      do j = 1, nc
        do i = 1, n
          e = y(i, j) - t(i, j)
          if (abs(e) <= self%delta) then
            acc = acc + 0.5_dp * e * e
            dy(i, j) = scale * e
          else
            acc = acc + self%delta * (abs(e) - 0.5_dp * self%delta)
            dy(i, j) = scale * self%delta * sign(1.0_wp, e)
          end if
        end do
      end do
    case (L_CCE)
      ! Keras (probabilities): y normalised to sum 1, clipped to [eps, 1 - eps]
      scale = 1 / real(nc, wp)
      do j = 1, nc
        s = sum(y(:, j))
        do i = 1, n
          yc = y(i, j) / s
          if (yc < EPS .or. yc > 1 - EPS) then
            acc = acc - t(i, j) * log(min(max(yc, EPS), 1 - EPS))
            dy(i, j) = 0
          else
            acc = acc - t(i, j) * log(yc)
            dy(i, j) = -t(i, j) / yc
          end if
        end do
        ! through the normalisation y / s
        dy(:, j) = scale * (dy(:, j) - sum(dy(:, j) * y(:, j)) / s) / s
      end do
      value = real(acc / nc, wp)
      return
    case (L_GNLL)
      dy = 0
      k = n / 2
      scale = 1 / (real(k, wp) * nc)
      do j = 1, nc
        do i = 1, k
          e = t(i, j) - y(i, j)
          s = exp(-y(k + i, j))
          acc = acc + 0.5_dp * (y(k + i, j) + e * e * s)
          dy(i, j) = -scale * e * s
          dy(k + i, j) = 0.5_wp * scale * (1 - e * e * s)
        end do
      end do
      value = real(acc / (real(k, dp) * nc), wp)
      return
    end select
    value = real(acc * scale, wp)
  end subroutine builtin_evaluate
end module colnn_losses
