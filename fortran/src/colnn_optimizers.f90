!> Optimizers whose updates follow Keras 3 exactly (formulas, defaults, the order of operations),
!> over the flat trainable-parameter vector of a network (Keras' variable order).
module colnn_optimizers
  use colnn_kinds, only: wp, dp, i8
  use colnn_status
  use colnn_strings, only: next_token, parse_real_dp, parse_logical, real_to_str
  use, intrinsic :: ieee_arithmetic, only: ieee_is_finite
  implicit none
  private

  public :: optimizer_t, parse_optimizer

  integer, parameter :: O_SGD = 1, O_RMSPROP = 2, O_ADAM = 3

  type :: optimizer_t
    integer :: kind = 0
    character(len=16) :: name = ''
    real(wp) :: learning_rate = 0
    real(wp) :: momentum = 0          !< sgd, rmsprop
    logical :: nesterov = .false.     !< sgd
    real(wp) :: rho = 0.9_wp          !< rmsprop
    logical :: centered = .false.     !< rmsprop
    real(wp) :: beta_1 = 0.9_wp, beta_2 = 0.999_wp   !< adam
    logical :: amsgrad = .false.      !< adam
    real(wp) :: epsilon = 1e-7_wp     !< rmsprop, adam
    integer(i8) :: iterations = 0
    real(wp), allocatable :: s1(:), s2(:), s3(:)   !< momentum / velocity / average grad or v_hat
  contains
    procedure :: step => optimizer_step
    procedure :: spec => optimizer_spec
  end type optimizer_t

contains

  !> 'sgd|rmsprop|adam [key=value ...]'; parameters left out take the Keras 3 defaults.
  subroutine parse_optimizer(text, opt, stat, errmsg)
    character(len=*), intent(in) :: text
    type(optimizer_t), intent(out) :: opt
    integer, intent(out) :: stat
    character(len=:), allocatable, intent(out) :: errmsg
    integer :: pos, first, last, eq
    character(len=:), allocatable :: key, val, name
    real(dp) :: r
    logical :: ok, b
    stat = COLNN_OK
    errmsg = ''
    pos = 1
    call next_token(text, pos, first, last)
    name = text(first:max(first - 1, last))
    select case (name)
    case ('sgd'); opt%kind = O_SGD; opt%learning_rate = 0.01_wp
    case ('rmsprop'); opt%kind = O_RMSPROP; opt%learning_rate = 0.001_wp
    case ('adam'); opt%kind = O_ADAM; opt%learning_rate = 0.001_wp
    case default
      stat = COLNN_ERR_UNSUPPORTED
      errmsg = "unknown optimizer '"//name//"' (sgd, rmsprop, adam)"
      return
    end select
    opt%name = name
    do
      call next_token(text, pos, first, last)
      if (last < first) exit
      eq = index(text(first:last), '=')
      if (eq <= 1) then
        stat = COLNN_ERR_FORMAT
        errmsg = "optimizer '"//name//"': '"//text(first:last)//"' is not KEY=VALUE"
        return
      end if
      key = text(first:first + eq - 2)
      val = text(first + eq:last)
      ok = .true.
      select case (name//':'//key)
      case ('sgd:learning_rate', 'rmsprop:learning_rate', 'adam:learning_rate')
        call parse_real_dp(val, r, ok); opt%learning_rate = real(r, wp)
        if (ok) ok = r > 0
      case ('sgd:momentum', 'rmsprop:momentum')
        call parse_real_dp(val, r, ok); opt%momentum = real(r, wp)
        if (ok) ok = r >= 0 .and. r < 1
      case ('sgd:nesterov')
        call parse_logical(val, b, ok); opt%nesterov = b
      case ('rmsprop:rho')
        call parse_real_dp(val, r, ok); opt%rho = real(r, wp)
        if (ok) ok = r >= 0 .and. r < 1
      case ('rmsprop:centered')
        call parse_logical(val, b, ok); opt%centered = b
      case ('adam:beta_1')
        call parse_real_dp(val, r, ok); opt%beta_1 = real(r, wp)
        if (ok) ok = r >= 0 .and. r < 1
      case ('adam:beta_2')
        call parse_real_dp(val, r, ok); opt%beta_2 = real(r, wp)
        if (ok) ok = r >= 0 .and. r < 1
      case ('adam:amsgrad')
        call parse_logical(val, b, ok); opt%amsgrad = b
      case ('rmsprop:epsilon', 'adam:epsilon')
        call parse_real_dp(val, r, ok); opt%epsilon = real(r, wp)
        if (ok) ok = r >= 0
      case default
        stat = COLNN_ERR_UNSUPPORTED
        errmsg = "optimizer '"//name//"' has no parameter '"//key//"'"
        return
      end select
      if (.not. ok) then
        stat = COLNN_ERR_ARGUMENT
        errmsg = "optimizer '"//name//"': bad value '"//val//"' for '"//key//"'"
        return
      end if
    end do
  end subroutine parse_optimizer

  function optimizer_spec(self) result(s)
    class(optimizer_t), intent(in) :: self
    character(len=:), allocatable :: s
    s = trim(self%name)//' learning_rate='//real_to_str(self%learning_rate)
    select case (self%kind)
    case (O_SGD)
      s = s//' momentum='//real_to_str(self%momentum)//' nesterov='// &
          trim(merge('true ', 'false', self%nesterov))
    case (O_RMSPROP)
      s = s//' rho='//real_to_str(self%rho)//' momentum='//real_to_str(self%momentum)// &
          ' epsilon='//real_to_str(self%epsilon)//' centered='// &
          trim(merge('true ', 'false', self%centered))
    case (O_ADAM)
      s = s//' beta_1='//real_to_str(self%beta_1)//' beta_2='//real_to_str(self%beta_2)// &
          ' epsilon='//real_to_str(self%epsilon)//' amsgrad='// &
          trim(merge('true ', 'false', self%amsgrad))
    end select
  end function optimizer_spec

  !> One update of p by the gradient g (both the network's flat trainable vector).
  subroutine optimizer_step(self, p, g)
    class(optimizer_t), intent(inout) :: self
    real(wp), intent(inout) :: p(:)
    real(wp), intent(in) :: g(:)
    real(wp) :: lr, alpha, b1p, b2p
    integer :: n
    n = size(p)
    if (.not. allocated(self%s1)) then
      allocate (self%s1(n), self%s2(n), self%s3(n))
      self%s1 = 0
      self%s2 = 0
      self%s3 = 0
    end if
    lr = self%learning_rate
    self%iterations = self%iterations + 1
    select case (self%kind)
    case (O_SGD)
      if (self%momentum /= 0) then
        self%s1 = -g * lr + self%s1 * self%momentum
        if (self%nesterov) then
          p = p + (-g * lr + self%s1 * self%momentum)
        else
          p = p + self%s1
        end if
      else
        p = p - g * lr
      end if
    case (O_RMSPROP)
      self%s2 = self%rho * self%s2 + (1 - self%rho) * g * g
      if (self%centered) then
        self%s3 = self%rho * self%s3 + (1 - self%rho) * g
        if (self%momentum > 0) then
          self%s1 = self%momentum * self%s1 + lr * g / sqrt(self%s2 - self%s3 * self%s3 + self%epsilon)
          p = p - self%s1
        else
          p = p - lr * g / sqrt(self%s2 - self%s3 * self%s3 + self%epsilon)
        end if
      else
        if (self%momentum > 0) then
          self%s1 = self%momentum * self%s1 + lr * g / sqrt(self%s2 + self%epsilon)
          p = p - self%s1
        else
          p = p - lr * g / sqrt(self%s2 + self%epsilon)
        end if
      end if
    case (O_ADAM)
      b1p = self%beta_1**real(self%iterations, wp)
      b2p = self%beta_2**real(self%iterations, wp)
      alpha = lr * sqrt(1 - b2p) / (1 - b1p)
      self%s1 = self%s1 + (g - self%s1) * (1 - self%beta_1)
      self%s2 = self%s2 + (g * g - self%s2) * (1 - self%beta_2)
      if (self%amsgrad) then
        self%s3 = max(self%s3, self%s2)
        p = p - (self%s1 * alpha) / (sqrt(self%s3) + self%epsilon)
      else
        p = p - (self%s1 * alpha) / (sqrt(self%s2) + self%epsilon)
      end if
    end select
  end subroutine optimizer_step
end module colnn_optimizers
